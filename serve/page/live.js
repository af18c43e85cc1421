// The page's live view: frames of a playing video file or of the camera go to WS /v1/stream one
// by one and come back 3x, 2 frames behind (the server needs each frame's 2 successors). It is
// live: a frame is taken only when fewer than MAX_IN_FLIGHT are at the server, so when the
// server is slower than the source the frames in between are skipped (a video job upscales
// every frame). Each output is drawn next to the frame it was made from.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const page = window.vsrPage; // page.js: the API key and the server's limits
  const FRAMES_BEHIND = 2;
  // In flight: the 2 frames behind, a forward pass of 4 windows running and the next 4 waiting. With
  // +4 the server ran passes of 2 windows, which cost a small model ~1.4x more per window
  // (benchmarks/README.md, bench_live_page.py); each frame more in flight adds a frame of latency.
  const MAX_IN_FLIGHT = FRAMES_BEHIND + 8;
  const RATE_WINDOW_MS = 5000; // the rate shown is of the frames back in the last 5 s
  const live = {
    ws: null, source: null, stream: null, url: null, size: null, maxFrames: 0,
    sent: [], received: 0, started: 0, ending: false, // sent: frames not yet answered
    recent: [], // {at, latency} of the frames back in the last RATE_WINDOW_MS (ms)
  };

  const showError = (message) => { $('live-error').textContent = message; };
  const median = (values) => {
    if (!values.length) return 0;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  };

  function streamSize(video) {
    // The frame sent: the chosen width (even, as video codecs like it), the source's aspect, at most
    // the server's max_pixels_per_frame.
    const chosen = Number($('live-width').value) || video.videoWidth;
    let width = Math.min(chosen, video.videoWidth);
    let height = Math.round((width * video.videoHeight) / video.videoWidth);
    const limit = page.limits() && page.limits().max_pixels_per_frame;
    if (limit && width * height > limit) {
      const shrink = Math.sqrt(limit / (width * height));
      width = Math.floor(width * shrink);
      height = Math.floor(height * shrink);
    }
    return { width: Math.max(2, width - (width % 2)), height: Math.max(2, height - (height % 2)) };
  }

  function rgbOf(canvas) {
    const { data } = canvas.getContext('2d', { willReadFrequently: true }).getImageData(0, 0, canvas.width, canvas.height);
    const rgb = new Uint8Array((data.length / 4) * 3);
    for (let i = 0, j = 0; i < data.length; i += 4, j += 3) {
      rgb[j] = data[i]; rgb[j + 1] = data[i + 1]; rgb[j + 2] = data[i + 2];
    }
    return rgb;
  }

  function backRate(backAt, now, started) {
    // Frames back per second over the last RATE_WINDOW_MS (since the start while it is younger):
    // what the stream delivers now, not an average since the start, which hides a slowdown.
    const span = Math.min(RATE_WINDOW_MS, now - started);
    if (span <= 0) return 0;
    return backAt.filter((at) => at > now - span && at <= now).length / (span / 1000);
  }

  function showStats(final) {
    const now = performance.now();
    while (live.recent.length && live.recent[0].at <= now - RATE_WINDOW_MS) live.recent.shift();
    const rate = backRate(live.recent.map((frame) => frame.at), now, live.started);
    const parts = [`${live.sent.length + live.received} sent`, `${live.received} back`,
      `${rate.toFixed(1)} frames back/s (last ${RATE_WINDOW_MS / 1000} s)`];
    const latencies = live.recent.filter((frame) => frame.latency !== null).map((frame) => frame.latency);
    if (latencies.length) parts.push(`latency ${Math.round(median(latencies))} ms (median)`);
    $('live-stats').textContent = (final ? 'Done: ' : '') + parts.join(' · ');
  }

  function setRunning(running) {
    $('live-stop').hidden = !running;
    $('live-camera').disabled = running;
    $('live-file').disabled = running;
    $('live-width').disabled = running;
    $('live-output').disabled = running;
  }

  function takeFrame() {
    // Called for every frame the source presents: send it if the server has room for it.
    const { ws, source } = live;
    if (!ws || ws.readyState !== WebSocket.OPEN || live.ending || !live.size) return;
    if (live.sent.length >= MAX_IN_FLIGHT || source.readyState < 2) return;
    if (live.maxFrames && live.sent.length + live.received >= live.maxFrames) {
      $('live-note').textContent = `this server takes at most ${live.maxFrames} frames per stream`;
      end();
      return;
    }
    const canvas = document.createElement('canvas');
    canvas.width = live.size.width;
    canvas.height = live.size.height;
    canvas.getContext('2d', { willReadFrequently: true }).drawImage(source, 0, 0, canvas.width, canvas.height);
    ws.send(rgbOf(canvas));
    live.sent.push({ canvas, at: performance.now() });
    showStats(false);
  }

  function watchFrames(video) {
    const next = () => {
      if (live.source !== video) return;
      takeFrame();
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(next);
      else requestAnimationFrame(next);
    };
    next();
  }

  async function onOutput(data) {
    const input = live.sent.shift();
    live.received += 1;
    const now = performance.now();
    live.recent.push({ at: now, latency: input ? now - input.at : null });
    const type = $('live-output').value === 'png' ? 'image/png' : 'image/jpeg';
    const bitmap = await createImageBitmap(new Blob([data], { type }));
    const out = $('live-out');
    out.width = bitmap.width;
    out.height = bitmap.height;
    out.getContext('2d').drawImage(bitmap, 0, 0);
    bitmap.close();
    if (input) {
      const shown = $('live-in');
      shown.width = input.canvas.width;
      shown.height = input.canvas.height;
      shown.getContext('2d').drawImage(input.canvas, 0, 0);
    }
    $('live-view').hidden = false;
    $('live-view').dataset.frames = String(live.received);
    showStats(false);
  }

  function onMessage(event) {
    if (typeof event.data !== 'string') return onOutput(event.data);
    const message = JSON.parse(event.data);
    if (message.type === 'ready') {
      live.maxFrames = message.max_frames;
      $('live-in-name').textContent = `sent: ${message.width}x${message.height}`;
      $('live-out-name').textContent = `model: ${message.scale * message.width}x${message.scale * message.height}`;
    } else if (message.type === 'end') {
      showStats(true);
      $('live-view').dataset.state = 'done';
    } else if (message.type === 'error') {
      showError(`${message.error}: ${message.detail}`);
      if (message.error === 'unauthorized') page.askForKey(message.detail);
    }
    return null;
  }

  function stopSource() {
    if (live.stream) for (const track of live.stream.getTracks()) track.stop();
    if (live.source) live.source.pause();
    live.stream = null;
  }

  function end() {
    // No more frames: the server answers the last 2 and ends the stream.
    if (!live.ws || live.ending) return;
    live.ending = true;
    stopSource();
    if (live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: 'end' }));
  }

  function base64url(text) {
    const bytes = new TextEncoder().encode(text);
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function start(video) {
    showError('');
    $('live-note').textContent = '';
    live.size = streamSize(video);
    Object.assign(live, {
      source: video, sent: [], received: 0, recent: [], ending: false, maxFrames: 0,
      started: performance.now(),
    });
    $('live-view').hidden = true;
    $('live-view').dataset.state = 'running';
    setRunning(true);
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    // A browser cannot set headers on a WebSocket: the key goes in a subprotocol, checked before the
    // server accepts the socket (a refused one never opens, and the browser is told no more).
    const protocols = page.key() ? ['vsr.v1', `bearer.${base64url(page.key())}`] : [];
    const ws = new WebSocket(`${scheme}://${window.location.host}/v1/stream`, protocols);
    ws.binaryType = 'arraybuffer';
    live.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify({ ...live.size, format: 'raw', output: $('live-output').value }));
      watchFrames(video);
    };
    let handled = Promise.resolve(); // one message after the other: drawing a frame is asynchronous
    ws.onmessage = (event) => { handled = handled.then(() => onMessage(event)).catch((err) => showError(err.message)); };
    ws.onerror = () => showError(opened ? 'the stream failed: cannot reach the server'
      : 'the server refused the stream: a wrong API key, or too many open streams (try again later)');
    ws.onclose = () => {
      if (live.ws !== ws) return;
      stopSource();
      live.ws = null;
      live.source = null;
      setRunning(false);
      if ($('live-view').dataset.state === 'running') $('live-view').dataset.state = 'closed';
    };
  }

  function playable(video) {
    return new Promise((resolve, reject) => {
      video.onloadeddata = () => resolve(video);
      video.onerror = () => reject(new Error('this browser cannot play it'));
    });
  }

  $('live-file').addEventListener('change', async (event) => {
    const [file] = event.target.files;
    event.target.value = '';
    if (!file) return;
    const video = $('live-source');
    video.srcObject = null;
    if (live.url) URL.revokeObjectURL(live.url);
    live.url = URL.createObjectURL(file);
    video.src = live.url;
    video.onended = end;
    try {
      await playable(video);
      start(video);
      await video.play();
    } catch (err) {
      showError(`cannot stream ${file.name}: ${err.message}`);
      if (live.ws) live.ws.close();
    }
  });

  $('live-camera').addEventListener('click', async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return showError('this browser gives no camera here (it needs https or localhost)');
    }
    try {
      live.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      return showError(`no camera: ${err.message}`);
    }
    const video = $('live-source');
    video.removeAttribute('src');
    video.onended = null;
    video.srcObject = live.stream;
    const ready = playable(video);
    await video.play();
    await ready;
    return start(video);
  });

  $('live-stop').addEventListener('click', end);
  window.vsrLive = { backRate, RATE_WINDOW_MS }; // for the page's tests
})();
