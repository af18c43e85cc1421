// The Experiments view: the Tune sweeps of the server (GET /v1/experiments) as sortable trials tables,
// the gain-over-bicubic and loss curves of the selected trials (charts.js), the last layer activity of
// one trial, a link to each trial's TensorBoard run, and Promote (PUT /v1/model through card.js). While a
// sweep runs, the view reloads every few seconds. Announces the trials as a 'vsr-experiments' event.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const page = window.vsrPage;
  const card = window.vsrCard;
  const charts = window.vsrCharts;
  const POLL_MS = 5000;
  const COLUMNS = [ // [sort key, header, cell text]
    ['trial_id', 'Trial', null],
    ['state', 'State', (t) => t.state],
    ['lr', 'LR', (t) => (t.lr === null ? '–' : t.lr.toExponential(2))],
    ['wd', 'WD', (t) => (t.wd === null ? '–' : t.wd.toExponential(2))],
    ['steps', 'Steps', (t) => `${t.steps}${t.max_steps ? ` / ${t.max_steps}` : ''}`],
    ['gain', 'Best gain', (t) => (t.best.gain === null ? '–' : `${t.best.gain >= 0 ? '+' : ''}${t.best.gain.toFixed(2)} dB`)],
    ['best_step', 'at step', (t) => (t.best.step === null ? '–' : String(t.best.step))],
    ['tof', 'tOF', (t) => (t.best.tof === null ? '–' : t.best.tof.toFixed(3))],
    ['note', 'Note', (t) => note(t)],
  ];
  const view = { data: null, sort: { key: 'gain', dir: -1 }, selected: new Set(), known: new Set(), focus: null,
                 served: null, timer: null };

  const keyOf = (t) => `${t.experiment}/${t.trial_id}`;
  const value = (t, key) => ({ gain: t.best.gain, best_step: t.best.step, tof: t.best.tof, note: note(t) }[key] ?? t[key]);
  const isServed = (t) => view.served && view.served.trial_id === t.trial_id
    && (!view.served.experiment || view.served.experiment === t.experiment);

  function note(t) {
    if (t.diverged) return 'diverged';
    if (t.stopped_early) return 'stopped early (ASHA)';
    return t.convergence || '';
  }

  function element(tag, props = {}, children = []) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function compare(a, b) {
    const [x, y] = [value(a, view.sort.key), value(b, view.sort.key)];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1; // missing values last, whatever the direction
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * view.sort.dir;
  }

  function header(experiment) {
    const head = element('tr');
    head.append(element('th', { scope: 'col', textContent: 'Curves' }));
    COLUMNS.forEach(([key, label], i) => {
      const th = element('th', { scope: 'col' });
      const sorted = view.sort.key === key;
      th.setAttribute('aria-sort', sorted ? (view.sort.dir > 0 ? 'ascending' : 'descending') : 'none');
      th.append(element('button', {
        type: 'button', className: 'sort', textContent: `${label}${sorted ? (view.sort.dir > 0 ? ' ▲' : ' ▼') : ''}`,
        onclick: () => {
          view.sort = { key, dir: sorted ? -view.sort.dir : (key === 'gain' ? -1 : 1) };
          render();
          document.querySelector(`#exp-${CSS.escape(experiment.name)} th button[data-key="${key}"]`).focus();
        },
      }));
      th.lastChild.dataset.key = key;
      head.append(th);
      if (i === 0) head.append(element('th', { scope: 'col', textContent: 'Serve' }));
    });
    head.append(element('th', { scope: 'col', textContent: 'TensorBoard' }));
    return element('thead', {}, [head]);
  }

  function trialRow(t, tensorboardUrl) {
    const tr = element('tr', { className: isServed(t) ? 'served' : '' });
    tr.dataset.trial = t.trial_id;
    const box = element('input', { type: 'checkbox', checked: view.selected.has(keyOf(t)),
                                   onchange: (e) => { e.target.checked ? view.selected.add(keyOf(t)) : view.selected.delete(keyOf(t)); drawCurves(); } });
    box.setAttribute('aria-label', `show trial ${t.trial_id} in the curves`);
    tr.append(element('td', {}, [box]));
    const name = element('button', { type: 'button', className: 'link', textContent: t.trial_id,
                                     onclick: () => { view.focus = keyOf(t); drawLayers(); } });
    name.setAttribute('aria-label', `layer activity of trial ${t.trial_id}`);
    tr.append(element('td', {}, [name]));
    const promote = element('button', { type: 'button', className: 'promote', textContent: isServed(t) ? 'Serving' : 'Promote',
                                        disabled: isServed(t) || t.checkpoint_step === null, onclick: () => promoteTrial(t, promote) });
    promote.title = t.checkpoint_step === null ? 'no checkpoint kept' : `serve its step-${t.checkpoint_step} checkpoint`;
    tr.append(element('td', {}, [promote]));
    for (const [key, , text] of COLUMNS.slice(1)) tr.append(element('td', { className: `col-${key}`, textContent: text(t) }));
    const run = t.tensorboard.split('/').slice(-2, -1)[0] || t.trial_id;
    tr.append(element('td', {}, [tensorboardUrl
      ? element('a', { href: `${tensorboardUrl.replace(/\/$/, '')}/?runFilter=${encodeURIComponent(run)}#timeseries`,
                       textContent: run, target: '_blank', rel: 'noopener' })
      : element('code', { textContent: t.tensorboard, title: 'tensorboard --logdir <the experiments folder>' })]));
    return tr;
  }

  async function promoteTrial(t, button) {
    button.disabled = true;
    $('experiments-error').textContent = '';
    try {
      await card.setModel({ trial: t.trial_id, experiment: t.experiment });
    } catch (err) {
      $('experiments-error').textContent = err.message;
      button.disabled = false;
    }
  }

  function experimentBlock(experiment, tensorboardUrl) {
    const changes = Object.entries(experiment.config_changes).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`);
    const block = element('div', { className: 'experiment', id: `exp-${experiment.name}` });
    block.append(
      element('h3', {}, [`${experiment.name} `, element('span', { className: `badge state-${experiment.state}`, textContent: experiment.state })]),
      element('p', { className: 'hint', textContent: `${experiment.trials.length} trials · best ${experiment.best_trial || '–'} · ${changes.join(', ')}` }),
      element('div', { className: 'table-wrap' }, [element('table', { className: 'trials' }, [
        header(experiment),
        element('tbody', {}, [...experiment.trials].sort(compare).map((t) => trialRow(t, tensorboardUrl))),
      ])]));
    return block;
  }

  function trials() {
    return view.data ? view.data.experiments.flatMap((e) => e.trials) : [];
  }

  function drawCurves() {
    const shown = trials().filter((t) => view.selected.has(keyOf(t)));
    const color = new Map(trials().map((t, i) => [keyOf(t), charts.PALETTE[i % charts.PALETTE.length]]));
    const series = (metric) => shown.map((t) => ({ name: t.trial_id, color: color.get(keyOf(t)), x: t.history.step, y: t.history[metric] }));
    charts.lineChart($('curve-gain'), series('gain'), { label: 'gain over bicubic (dB) by step' });
    charts.lineChart($('curve-loss'), series('loss'), { label: 'training loss by step' });
    $('curve-legend').replaceChildren(...shown.map((t) => {
      const swatch = element('span', { className: 'swatch' });
      swatch.style.background = color.get(keyOf(t));
      return element('li', {}, [swatch, `${t.trial_id} (${t.experiment})`]);
    }));
  }

  function drawLayers() {
    const t = trials().find((x) => keyOf(x) === view.focus);
    $('layers-title').textContent = t ? `Layer activity of trial ${t.trial_id} (step ${t.steps})` : 'Layer activity';
    const rows = t ? Object.entries(t.layers) : [];
    $('layers').replaceChildren(...rows.map(([name, v]) => {
      const bar = element('span', { className: 'bar-fill' });
      bar.style.width = `${Math.round(Math.max(0, Math.min(1, v ?? 0)) * 100)}%`;
      const row = element('div', { className: `layer${v !== null && v < 0.2 ? ' cold' : ''}` }, [
        element('span', { className: 'layer-name', textContent: name }),
        element('span', { className: 'bar' }, [bar]),
        element('span', { className: 'layer-value', textContent: v === null ? '–' : `${Math.round(v * 100)}%` })]);
      row.dataset.layer = name;
      return row;
    }));
  }

  function render() {
    const { experiments, tensorboard_url: url } = view.data;
    for (const key of trials().map(keyOf)) { // a trial shows in the curves from its first appearance on
      if (!view.known.has(key)) { view.known.add(key); view.selected.add(key); }
    }
    if (!view.focus || !trials().some((t) => keyOf(t) === view.focus)) {
      const best = [...trials()].sort((a, b) => (b.best.gain ?? -Infinity) - (a.best.gain ?? -Infinity))[0];
      view.focus = best ? keyOf(best) : null;
    }
    $('experiments-list').replaceChildren(...experiments.map((e) => experimentBlock(e, url)));
    $('experiments-empty').hidden = experiments.length > 0;
    drawCurves();
    drawLayers();
  }

  async function load() {
    clearTimeout(view.timer);
    try {
      view.data = await (await page.api('/v1/experiments')).json();
    } catch (err) {
      $('experiments-error').textContent = err.status === 401 ? '' : err.message;
      return;
    }
    $('experiments').hidden = !view.data.configured;
    if (!view.data.configured) return;
    render();
    document.dispatchEvent(new CustomEvent('vsr-experiments', { detail: view.data.experiments }));
    if (view.data.experiments.some((e) => e.state === 'running' || e.state === 'starting')) view.timer = setTimeout(load, POLL_MS);
  }

  document.addEventListener('vsr-model', (event) => {
    view.served = { trial_id: event.detail.trial_id, experiment: event.detail.experiment };
    if (view.data && view.data.configured) render();
  });
  document.addEventListener('vsr-key', load);
  load();
})();
