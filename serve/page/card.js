// The model card: the served checkpoint (GET /v1/model), the trial and experiment it comes from, its
// validation scores (PSNR, SSIM, tOF against bicubic's), and a one-click rollback to the model served
// before a promotion (PUT /v1/model {"rollback": true}). Every change of the served model is announced
// as a 'vsr-model' event (detail: the /v1/model answer) for experiments.js and models.js.
'use strict';
window.vsrCard = (() => {
  const $ = (id) => document.getElementById(id);
  const page = window.vsrPage;

  const metric = (metrics, names) => {
    for (const name of names) if (metrics && typeof metrics[name] === 'number' && isFinite(metrics[name])) return metrics[name];
    return null;
  };
  const db = (v) => (v === null ? null : `${v.toFixed(2)} dB`);
  const px = (v) => (v === null ? null : `${v.toFixed(3)} px`);
  const signed = (v) => `${v >= 0 ? '+' : ''}${v.toFixed(2)} dB`;
  const trialName = (o) => (o && o.trial_id ? `trial ${o.trial_id}${o.experiment ? ` · ${o.experiment}` : ''}` : null);

  function renderCard(rows) {
    const card = $('model-card');
    card.replaceChildren();
    for (const [id, label, value] of rows) {
      const dt = document.createElement('dt');
      const dd = document.createElement('dd');
      dt.textContent = label;
      dd.id = `model-${id}`;
      if (value === null || value === undefined) {
        dd.textContent = 'not available';
        dd.className = 'na';
      } else {
        dd.textContent = value;
      }
      card.append(dt, dd);
    }
  }

  function show(info) {
    page.setLimits(info.limits || null);
    const m = info.metrics;
    const psnr = metric(m, ['psnr', 'psnr_y', 'val_psnr']);
    const ssim = metric(m, ['ssim', 'ssim_y', 'val_ssim']);
    const bPsnr = metric(m, ['bicubic_psnr', 'bicubic_psnr_y']);
    const bSsim = metric(m, ['bicubic_ssim', 'bicubic_ssim_y']);
    const tof = metric(m, ['tof']);
    const bTof = metric(m, ['bicubic_tof']);
    const gain = psnr !== null && bPsnr !== null ? signed(psnr - bPsnr) : null;
    renderCard([
      ['trial', 'Trial', info.trial_id || null],
      ['experiment', 'Experiment', info.experiment || null],
      ['preset', 'Preset', info.preset],
      ['step', 'Step', String(info.step)],
      ['phase', 'Training phase', info.training_phase],
      ['architecture', 'Architecture', info.architecture
        ? `${info.architecture.channels} channels, ${info.architecture.blocks_per_branch}+${info.architecture.blocks_per_branch} blocks`
        : null],
      ['parameters', 'Parameters', typeof info.parameters === 'number' ? info.parameters.toLocaleString('en-US') : null],
      ['psnr', 'Val PSNR', db(psnr)],
      ['bicubic-psnr', 'Bicubic PSNR', db(bPsnr)],
      ['gain', 'Gain', gain],
      ['ssim', 'Val SSIM', ssim === null ? null : ssim.toFixed(4)],
      ['bicubic-ssim', 'Bicubic SSIM', bSsim === null ? null : bSsim.toFixed(4)],
      ['tof', 'Val tOF', px(tof)],
      ['bicubic-tof', 'Bicubic tOF', px(bTof)],
      ['device', 'Device', info.device],
      ['checkpoint', 'Checkpoint', info.checkpoint ? `${info.checkpoint} (${info.checkpoint_id})` : null],
    ]);
    if (gain) $('model-gain').className = 'gain';
    const previous = info.previous;
    $('rollback').hidden = !previous;
    $('rollback').textContent = previous ? `Roll back to ${trialName(previous) || previous.checkpoint || 'the previous model'}`
      + (previous.step !== undefined && previous.step !== null ? ` (step ${previous.step})` : '') : '';
    $('model-note').textContent = info.promote_error || '';
    document.dispatchEvent(new CustomEvent('vsr-model', { detail: info }));
  }

  async function load() {
    renderCard([['status', 'Status', 'loading…']]);
    let info;
    try {
      info = await (await page.api('/v1/model')).json();
    } catch (err) {
      renderCard([['status', 'Status', err.status === 401 ? 'needs an API key' : err.message]]);
      return;
    }
    $('auth').hidden = true;
    show(info);
  }

  async function setModel(body) {
    // PUT /v1/model: promote (a trial or a checkpoint) or roll back; the card shows the new model.
    $('model-note').textContent = '';
    const response = await page.api('/v1/model', {
      method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    show(await response.json());
  }

  $('rollback').addEventListener('click', async () => {
    $('rollback').disabled = true;
    try {
      await setModel({ rollback: true });
    } catch (err) {
      $('model-note').textContent = err.message;
    } finally {
      $('rollback').disabled = false;
    }
  });

  document.addEventListener('vsr-key', load);
  load();
  return { load, setModel, trialName };
})();
