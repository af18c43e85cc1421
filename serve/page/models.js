// Compare two models: the same frames (a clip, or frames in name order) through model A, model B and
// bicubic (POST /v1/compare). When the clip is the original, the server downscales it with its own
// degradation and scores each result: per-frame PSNR, tOF and flicker. The results open in the compare
// view, where the divider works between any two of them (and the original).
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const page = window.vsrPage;
  const compare = window.vsrCompare;
  const IMAGE = /\.(png|jpe?g)$/i;
  const models = { experiments: [], served: null, previous: null, files: [], results: null, picked: {} };

  const option = (value, text) => Object.assign(document.createElement('option'), { value, textContent: text });
  const fixed = (v, digits, unit = '') => (v === null || v === undefined ? '–' : `${v.toFixed(digits)}${unit}`);

  function choices() {
    // [id, label] of every model a compare can run: the served one, the previous one, each trial with a checkpoint
    const list = [['served', `served${models.served && models.served.trial_id ? ` (trial ${models.served.trial_id})` : ''}`]];
    if (models.previous) list.push(['previous', `previous (${window.vsrCard.trialName(models.previous) || 'model'})`]);
    const trials = models.experiments.flatMap((e) => e.trials).filter((t) => t.checkpoint_step !== null)
      .sort((a, b) => (b.best.gain ?? -Infinity) - (a.best.gain ?? -Infinity));
    for (const t of trials) {
      const gain = t.best.gain === null ? '' : `, ${t.best.gain >= 0 ? '+' : ''}${t.best.gain.toFixed(2)} dB`;
      list.push([`${t.experiment}/${t.trial_id}`, `trial ${t.trial_id} (${t.experiment}, step ${t.checkpoint_step}${gain})`]);
    }
    return list;
  }

  function fillSelects() {
    // A: the served model; B: the best trial that is not served (else the previous model). A choice the
    // user made stays while it exists and the two differ.
    const list = choices();
    const ids = list.map(([value]) => value);
    const servedTrial = models.served && models.served.trial_id ? `/${models.served.trial_id}` : null;
    const best = ids.find((id) => id !== 'served' && id !== 'previous' && !(servedTrial && id.endsWith(servedTrial)));
    for (const select of [$('model-a'), $('model-b')]) select.replaceChildren(...list.map(([value, text]) => option(value, text)));
    const keep = (select, kept, fallback) => { select.value = ids.includes(kept) ? kept : fallback; };
    keep($('model-a'), models.picked.a, 'served');
    keep($('model-b'), models.picked.b, best || (ids.includes('previous') ? 'previous' : ids.find((id) => id !== 'served')));
    if ($('model-a').value === $('model-b').value) $('model-b').value = ids.find((id) => id !== $('model-a').value) || '';
    $('models').hidden = list.length < 2;
  }

  $('model-a').addEventListener('change', () => { models.picked.a = $('model-a').value; });
  $('model-b').addEventListener('change', () => { models.picked.b = $('model-b').value; });

  $('models-file').addEventListener('change', (event) => {
    models.files = [...event.target.files];
    event.target.value = '';
    $('models-file-name').textContent = models.files.map((f) => f.name).join(', ');
    $('models-error').textContent = '';
  });

  async function run() {
    const files = models.files;
    $('models-error').textContent = '';
    if (!files.length) return void ($('models-error').textContent = 'choose a clip, or frames (PNG/JPEG), first');
    const images = files.filter((f) => IMAGE.test(f.name) || f.type.startsWith('image/'));
    if (images.length !== files.length && files.length !== 1) {
      return void ($('models-error').textContent = 'choose one clip, or frames (PNG/JPEG) only');
    }
    const form = new FormData();
    if (images.length) {
      for (const f of images.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }))) form.append('frames', f, f.name);
    } else {
      form.append('video', files[0], files[0].name);
      form.append('start', String(Math.max(0, Number($('models-start').value) || 0)));
      form.append('count', $('models-count').value);
    }
    form.append('models', `${$('model-a').value},${$('model-b').value}`);
    form.append('reference', $('models-reference').checked ? 'true' : 'false');
    $('models-run').disabled = true;
    $('models-status').textContent = 'running both models and bicubic on the same frames…';
    try {
      const body = await (await page.api('/v1/compare', { method: 'POST', body: form })).json();
      await show(body, page.stemOf(files[0].name));
      $('models-status').textContent = `${body.frames} frames, ${body.width}x${body.height}`;
    } catch (err) {
      $('models-error').textContent = err.message;
      $('models-status').textContent = '';
    } finally {
      $('models-run').disabled = false;
    }
  }

  async function canvasOfUrl(url) {
    const image = new Image();
    image.src = url;
    await image.decode();
    return compare.canvasOf(image);
  }

  async function show(body, stem) {
    const results = await Promise.all(body.results.map(async (r) => ({ ...r, canvases: await Promise.all(r.frames.map(canvasOfUrl)) })));
    models.results = results;
    for (const id of ['left-pick', 'right-pick']) {
      $(id).replaceChildren(...results.map((r, i) => option(String(i), r.label)));
    }
    $('left-pick').value = '1'; // model A | model B: the two models, first
    $('right-pick').value = '2';
    scores(results, 0);
    page.showFrames(body.frames, stem, (i) => renderFrame(i));
  }

  function scores(results, frame) {
    const rows = results.filter((r) => r.id !== 'original').map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.result = r.id;
      for (const text of [r.label, r.psnr ? fixed(r.psnr[frame], 2, ' dB') : '–', fixed(r.mean_psnr, 2, ' dB'),
        fixed(r.tof, 3), fixed(r.flicker, 3)]) tr.append(Object.assign(document.createElement('td'), { textContent: text }));
      return tr;
    });
    $('compare-scores').replaceChildren(...rows);
    $('compare-scores-wrap').hidden = !results.some((r) => r.psnr);
  }

  async function renderFrame(i) {
    const results = models.results;
    const left = results[Number($('left-pick').value)];
    const right = results[Number($('right-pick').value)];
    compare.show(left.canvases[i], right.canvases[i], left.label, right.label);
    scores(results, i);
    $('compare').dataset.frame = `models-${i}`;
    page.setPng(await compare.toPng(right.canvases[i]), `frame${i + 1}_${right.id.replace(/[^\w.-]+/g, '_')}`);
  }

  for (const id of ['left-pick', 'right-pick']) {
    $(id).addEventListener('change', () => models.results && renderFrame(Number($('frame').value)));
  }
  $('models-run').addEventListener('click', run);
  document.addEventListener('vsr-experiments', (event) => { models.experiments = event.detail; fillSelects(); });
  document.addEventListener('vsr-model', (event) => {
    models.served = event.detail;
    models.previous = event.detail.previous;
    fillSelects();
  });
})();
