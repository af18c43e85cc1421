// The page of the Serve app: the API and its key, upload (a video -> a job; several videos -> the
// jobs list of jobs.js; 5 frames -> /v1/upscale), live progress with cancel, a before/after compare
// (exact 3x bicubic from /v1/bicubic vs the model, or any two results of a model compare: models.js)
// with a pixel-exact zoom, downloads. The model card is card.js, the experiments experiments.js, the
// live stream live.js. Vanilla JS, no build step, nothing from a CDN.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const compare = window.vsrCompare; // compare.js
  const KEY_STORE = 'vsr-api-key'; // sessionStorage: this tab only, never in a URL
  const VIDEO_TYPES = ['video/mp4', 'video/quicktime', 'video/x-matroska', 'video/webm'];
  const VIDEO_NAME = /\.(mp4|mov|mkv|webm|avi)$/i;
  const IMAGE_TYPES = ['image/png', 'image/jpeg'];
  const POLL_MS = 400;

  const state = {
    key: sessionStorage.getItem(KEY_STORE) || '', limits: null, busy: false, job: null, xhr: null,
    urls: [], pngUrl: null, frames: 1, frameToken: 0,
    stem: 'result', sourceOk: false, mode: null, renderFrame: null,
  };

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }
  class Cancelled extends Error {}

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const stemOf = (name) => (name.replace(/\.[^.]*$/, '') || 'result').replace(/[^\w.-]+/g, '_');
  const mb = (bytes) => (bytes / 1024 / 1024).toFixed(1);
  const track = (url) => { state.urls.push(url); return url; };
  const clock = (s) => (s < 60 ? `${Math.round(s)} s` : `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, '0')}`);

  // --- API ------------------------------------------------------------------------------
  const authHeaders = (extra = {}) => (state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra);

  async function errorDetail(response) {
    try {
      const body = await response.json();
      if (body && body.detail) return String(body.detail);
    } catch (_) { /* not JSON */ }
    return `${response.status} ${response.statusText || 'error'}`;
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
    } catch (err) {
      throw new ApiError(0, `cannot reach the server (${err.message})`);
    }
    if (!response.ok) {
      const detail = await errorDetail(response);
      if (response.status === 401) askForKey(detail);
      throw new ApiError(response.status, detail);
    }
    return response;
  }

  // --- API key --------------------------------------------------------------------------
  function askForKey(detail) {
    $('auth').hidden = false;
    $('auth-message').textContent = `${state.key ? 'The key was refused' : 'This server needs an API key'} (401): ${detail}`;
  }

  $('auth-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.key = $('api-key').value.trim();
    $('api-key').value = '';
    sessionStorage.setItem(KEY_STORE, state.key);
    $('auth').hidden = true;
    document.dispatchEvent(new Event('vsr-key')); // card.js, jobs.js, experiments.js load again
  });

  // --- upload ---------------------------------------------------------------------------
  const showError = (message) => { $('upload-error').textContent = message; };

  function setProgress(label, fraction, text) {
    $('job').hidden = false;
    $('job-label').textContent = label;
    const percent = Math.round(clamp(fraction, 0, 1) * 100);
    $('job-progress').value = percent;
    $('job-percent').textContent = `${percent}%`;
    $('job-stats').textContent = text;
  }

  function setBusy(busy, cancellable) {
    state.busy = busy;
    $('file').disabled = busy;
    $('cancel').hidden = !(busy && cancellable);
  }

  const drop = $('drop');
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add('over'); });
  }
  for (const type of ['dragleave', 'drop']) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.remove('over'); });
  }
  drop.addEventListener('drop', (event) => handleFiles([...event.dataTransfer.files]));
  window.addEventListener('dragover', (event) => event.preventDefault()); // a missed drop must not open the file
  window.addEventListener('drop', (event) => event.preventDefault());
  $('file').addEventListener('change', (event) => {
    const files = [...event.target.files];
    event.target.value = ''; // choosing the same file again is a new upload
    handleFiles(files);
  });

  const isVideo = (file) => VIDEO_TYPES.includes(file.type) || file.type.startsWith('video/') || VIDEO_NAME.test(file.name);

  function handleFiles(files) {
    showError('');
    if (files.length > 1 && files.every(isVideo)) return window.vsrJobs.queue(files); // jobs.js: one job each
    if (state.busy) return showError('wait for the current upload to finish, or cancel it');
    if (files.length === 5) return runWindow(files.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true })));
    if (files.length !== 1) return showError(`choose one video or exactly 5 frames (got ${files.length} files)`);
    const [file] = files;
    if (IMAGE_TYPES.includes(file.type)) {
      return showError('one image is not enough: the model needs 5 consecutive frames (choose 5 together), or a video');
    }
    const limit = state.limits && state.limits.job_max_upload_bytes;
    if (limit && file.size > limit) return showError(`the file is ${mb(file.size)} MB; this server takes at most ${mb(limit)} MB`);
    return runJob(file);
  }

  function uploadVideo(file) {
    return postVideo(file, (xhr) => { state.xhr = xhr; }, (e) => {
      if (e.lengthComputable) setProgress('Uploading', e.loaded / e.total, `${mb(e.loaded)} of ${mb(e.total)} MB`);
    }).then((id) => {
      document.dispatchEvent(new CustomEvent('vsr-job', { detail: id })); // jobs.js lists it
      return id;
    });
  }

  function postVideo(file, started, progress) {
    // POST /v1/jobs with upload progress (XMLHttpRequest, not fetch: fetch does not report it) -> the job id
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      started(xhr);
      xhr.open('POST', `/v1/jobs?filename=${encodeURIComponent(file.name)}`);
      xhr.setRequestHeader('Content-Type', VIDEO_TYPES.includes(file.type) ? file.type : 'application/octet-stream');
      if (state.key) xhr.setRequestHeader('Authorization', `Bearer ${state.key}`);
      xhr.upload.onprogress = progress;
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
        if (xhr.status === 202 && body && body.id) return resolve(body.id);
        const detail = body && body.detail ? String(body.detail) : `${xhr.status} ${xhr.statusText || 'error'}`;
        if (xhr.status === 401) askForKey(detail);
        return reject(new ApiError(xhr.status, detail));
      };
      xhr.onerror = () => reject(new ApiError(0, 'the upload failed: the server closed the connection'));
      xhr.onabort = () => reject(new Cancelled());
      xhr.send(file);
    });
  }

  function showJob(job) {
    const parts = [`${job.frames_done} / ${job.frames_total ?? '?'} frames`];
    if (job.fps) parts.push(`${job.fps.toFixed(1)} fps`);
    if (job.state === 'running' && job.eta_seconds !== null) parts.push(`ETA ${clock(job.eta_seconds)}`);
    const label = { queued: 'Queued', running: 'Upscaling', done: 'Done' }[job.state] || job.state;
    setProgress(label, job.state === 'done' ? 1 : job.progress || 0, parts.join(' · '));
  }

  async function runJob(file) {
    resetResult();
    setBusy(true, true);
    state.stem = stemOf(file.name);
    setProgress('Uploading', 0, '');
    try {
      const id = await uploadVideo(file);
      state.xhr = null;
      state.job = id;
      let job;
      for (;;) {
        job = await (await api(`/v1/jobs/${id}`)).json();
        if (state.job !== id) throw new Cancelled();
        showJob(job);
        if (job.state === 'done') break;
        if (job.state === 'cancelled') throw new Cancelled();
        if (job.state === 'failed') throw new ApiError(200, `the job failed: ${job.error || 'unknown error'}`);
        await sleep(POLL_MS);
      }
      setBusy(true, false);
      $('job-stats').textContent += ' · fetching the result…';
      const blob = await (await api(`/v1/jobs/${id}/result`)).blob();
      showJob(job);
      await showVideoResult(file, blob, job);
    } catch (err) {
      if (err instanceof Cancelled) {
        setProgress('Cancelled', 0, 'the job was cancelled and deleted');
      } else {
        $('job-label').textContent = 'Failed';
        showError(err.message);
      }
    } finally {
      state.xhr = null;
      setBusy(false, false);
    }
  }

  $('cancel').addEventListener('click', async () => {
    const id = state.job;
    state.job = null;
    if (state.xhr) state.xhr.abort();
    if (!id) return;
    try {
      await api(`/v1/jobs/${id}`, { method: 'DELETE' });
    } catch (err) {
      showError(err.message);
    }
  });

  async function runWindow(files) {
    resetResult();
    setBusy(true, false);
    setProgress('Upscaling 5 frames', 0, '');
    try {
      const form = new FormData();
      for (const file of files) form.append('frames', file, file.name);
      const model = await (await api('/v1/upscale', { method: 'POST', body: form })).blob();
      const center = files[2];
      state.stem = stemOf(center.name);
      const type = IMAGE_TYPES.includes(center.type) ? center.type : 'application/octet-stream';
      const bicubic = await (await api('/v1/bicubic', { method: 'POST', headers: { 'Content-Type': type }, body: center })).blob();
      setProgress('Done', 1, '5 frames in, the 3x center frame out');
      state.mode = 'window';
      showResult();
      compare.show(await compare.canvasOfImage(bicubic), await compare.canvasOfImage(model), 'bicubic');
      $('compare').dataset.frame = 'center';
      setPng(model, 'x3');
    } catch (err) {
      $('job-label').textContent = 'Failed';
      showError(err.message);
    } finally {
      setBusy(false, false);
    }
  }

  // --- result: frames from the two videos -------------------------------------------------
  function resetResult() {
    state.frameToken += 1;
    for (const url of state.urls) URL.revokeObjectURL(url);
    if (state.pngUrl) URL.revokeObjectURL(state.pngUrl);
    Object.assign(state, { urls: [], pngUrl: null, job: null, mode: null, renderFrame: null });
    compare.clear();
    for (const id of ['video-source', 'video-result']) $(id).removeAttribute('src');
    $('result').hidden = true;
    $('download-video').hidden = true;
    $('compare-status').textContent = '';
    delete $('compare').dataset.frame;
  }

  function showResult() {
    $('result').hidden = false;
    $('frame-pick').hidden = state.mode !== 'video' && state.mode !== 'frames';
    $('download-video').hidden = state.mode !== 'video';
    $('compare-picks').hidden = state.mode !== 'frames';
  }

  function showFrames(count, stem, renderFrame) {
    // The compare view over ``count`` frames drawn by ``renderFrame(i)`` (models.js: a model compare).
    resetResult();
    Object.assign(state, { mode: 'frames', frames: count, stem, renderFrame });
    showResult();
    const frame = $('frame');
    frame.max = String(count - 1);
    frame.value = '0';
    $('frame-out').value = `1 / ${count}`;
    $('result').scrollIntoView({ block: 'nearest' });
    renderFrame(0);
  }

  function loadVideo(video, url) {
    return new Promise((resolve, reject) => {
      video.onloadeddata = () => resolve(video);
      video.onerror = () => reject(new Error(video.error ? video.error.message || `code ${video.error.code}` : 'cannot decode'));
      video.src = url;
      video.load();
    });
  }

  function seek(video, time) {
    return new Promise((resolve) => {
      video.addEventListener('seeked', () => resolve(), { once: true });
      video.currentTime = time;
    });
  }

  const frameTime = (video, i) => (isFinite(video.duration) ? ((i + 0.5) * video.duration) / state.frames : 0);

  async function showVideoResult(file, blob, job) {
    state.mode = 'video';
    state.frames = Math.max(1, job.frames_total || 1);
    const resultUrl = track(URL.createObjectURL(blob));
    const link = $('download-video');
    link.href = resultUrl;
    link.download = `${state.stem}_x3${blob.type === 'video/x-matroska' ? '.mkv' : '.mp4'}`;
    showResult();
    const frame = $('frame');
    frame.max = String(state.frames - 1);
    frame.value = String(Math.floor((state.frames - 1) / 2));
    try {
      await loadVideo($('video-result'), resultUrl);
    } catch (err) {
      $('compare-status').textContent = `this browser cannot decode the result (${err.message}); download it instead`;
      return;
    }
    state.sourceOk = await loadVideo($('video-source'), track(URL.createObjectURL(file))).then(() => true, () => false);
    await showVideoFrame(Number(frame.value));
  }

  async function showVideoFrame(i) {
    const token = ++state.frameToken;
    const result = $('video-result');
    const source = $('video-source');
    $('frame-out').value = `${i + 1} / ${state.frames}`;
    $('compare-status').textContent = `loading frame ${i + 1}…`;
    await Promise.all([seek(result, frameTime(result, i)), state.sourceOk && seek(source, frameTime(source, i))]);
    if (token !== state.frameToken) return;
    const model = compare.canvasOf(result);
    let bicubic = null;
    let name = 'bicubic';
    let note = '';
    if (state.sourceOk) {
      const lr = compare.canvasOf(source);
      try {
        const png = await (await api('/v1/bicubic', { method: 'POST', headers: { 'Content-Type': 'image/png' }, body: await compare.toPng(lr) })).blob();
        bicubic = await compare.canvasOfImage(png);
      } catch (err) {
        bicubic = compare.canvasOf(lr, model.width, model.height);
        name = 'bicubic (browser)';
        note = `exact bicubic unavailable (${err.message}); showing the browser's smoothing`;
      }
    } else {
      note = 'this browser cannot decode the original video: no bicubic to compare with';
    }
    if (token !== state.frameToken) return;
    $('compare-status').textContent = note;
    compare.show(bicubic, model, name);
    setPng(await compare.toPng(model), `frame${i + 1}_x3`);
    $('compare').dataset.frame = String(i);
  }

  $('frame').addEventListener('input', (event) => {
    const i = Number(event.target.value);
    if (state.mode === 'video') showVideoFrame(i);
    if (state.mode === 'frames') {
      $('frame-out').value = `${i + 1} / ${state.frames}`;
      state.renderFrame(i);
    }
  });

  function setPng(blob, suffix) {
    if (state.pngUrl) URL.revokeObjectURL(state.pngUrl);
    state.pngUrl = URL.createObjectURL(blob);
    $('download-png').href = state.pngUrl;
    $('download-png').download = `${state.stem}_${suffix}.png`;
  }

  window.vsrPage = { // for card.js, jobs.js, models.js, experiments.js and live.js
    key: () => state.key, limits: () => state.limits, setLimits: (limits) => { state.limits = limits; },
    askForKey, api, ApiError, postVideo, isVideo, stemOf, setPng, showFrames,
  };
})();
