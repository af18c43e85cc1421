// The jobs list: every video job of this API key (GET /v1/jobs), so it survives a reload, with its
// state, progress, a download of the result and cancel (or remove, once it ended). Several videos
// chosen or dropped at once are queued here: uploaded one after another, each becoming a job.
'use strict';
window.vsrJobs = (() => {
  const $ = (id) => document.getElementById(id);
  const page = window.vsrPage;
  const POLL_MS = 1000;
  const ENDED = ['done', 'failed', 'cancelled'];
  const jobs = { list: [], uploads: [], timer: null, uploading: false };

  const percent = (fraction) => `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  const clock = (s) => (s < 60 ? `${Math.round(s)} s` : `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, '0')}`);

  function element(tag, props = {}, children = []) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function describe(job) {
    const parts = [`${job.frames_done} / ${job.frames_total ?? '?'} frames`];
    if (job.state === 'running' && job.fps) parts.push(`${job.fps.toFixed(1)} fps`);
    if (job.state === 'running' && job.eta_seconds !== null) parts.push(`ETA ${clock(job.eta_seconds)}`);
    if (job.error) parts.push(job.error);
    return parts.join(' · ');
  }

  function row(job) {
    const fraction = job.state === 'done' ? 1 : job.progress || 0;
    const item = element('li', { className: `job job-${job.state}` });
    item.dataset.job = job.id;
    item.dataset.state = job.state;
    const progress = element('progress', { max: 100, value: Math.round(fraction * 100) });
    progress.setAttribute('aria-label', `${job.source_name}: ${job.state} ${percent(fraction)}`);
    const buttons = element('div', { className: 'row' });
    if (job.state === 'done') {
      buttons.append(element('button', { type: 'button', className: 'job-download', textContent: 'Download',
                                          onclick: () => download(job, item) }));
    }
    const ended = ENDED.includes(job.state);
    buttons.append(element('button', { type: 'button', className: `job-cancel secondary`,
                                        textContent: ended ? 'Remove' : 'Cancel', onclick: () => cancel(job) }));
    item.append(
      element('div', { className: 'row job-head' }, [
        element('span', { className: 'job-name', textContent: job.source_name }),
        element('span', { className: 'job-state', textContent: `${job.state} ${ended ? '' : percent(fraction)}`.trim() }),
      ]),
      progress, element('p', { className: 'hint job-stats', textContent: describe(job) }), buttons);
    return item;
  }

  function uploadRow(upload) {
    const item = element('li', { className: 'job job-uploading' });
    item.dataset.state = 'uploading';
    const progress = element('progress', { max: 100, value: Math.round(upload.fraction * 100) });
    progress.setAttribute('aria-label', `${upload.file.name}: uploading ${percent(upload.fraction)}`);
    item.append(element('div', { className: 'row job-head' }, [
      element('span', { className: 'job-name', textContent: upload.file.name }),
      element('span', { className: 'job-state', textContent: upload.error ? 'failed' : (upload.started ? `uploading ${percent(upload.fraction)}` : 'waiting') }),
    ]), progress);
    if (upload.error) item.append(element('p', { className: 'error', textContent: upload.error }));
    return item;
  }

  function render() {
    const list = $('jobs-list');
    list.replaceChildren(...jobs.uploads.map(uploadRow), ...[...jobs.list].reverse().map(row));
    $('jobs').hidden = !list.children.length;
  }

  async function refresh() {
    try {
      jobs.list = (await (await page.api('/v1/jobs')).json()).jobs;
      $('jobs-error').textContent = '';
    } catch (err) {
      $('jobs-error').textContent = err.status === 401 ? '' : err.message;
    }
    render();
    clearTimeout(jobs.timer);
    if (jobs.uploads.length || jobs.list.some((job) => !ENDED.includes(job.state))) jobs.timer = setTimeout(refresh, POLL_MS);
  }

  async function download(job, item) {
    const button = item.querySelector('.job-download');
    button.disabled = true;
    button.textContent = 'Fetching…';
    try {
      const blob = await (await page.api(`/v1/jobs/${job.id}/result`)).blob();
      const link = item.querySelector('a.job-link') || element('a', { className: 'job-link button' });
      link.href = URL.createObjectURL(blob);
      link.download = `${page.stemOf(job.source_name)}_x3${blob.type === 'video/x-matroska' ? '.mkv' : '.mp4'}`;
      link.textContent = `Save ${link.download}`;
      item.append(link);
      link.click();
    } catch (err) {
      $('jobs-error').textContent = err.message;
    } finally {
      button.disabled = false;
      button.textContent = 'Download';
    }
  }

  async function cancel(job) {
    try {
      await page.api(`/v1/jobs/${job.id}`, { method: 'DELETE' });
    } catch (err) {
      $('jobs-error').textContent = err.message;
    }
    refresh();
  }

  function queue(files) {
    // Several videos: one job each, uploaded one after another (the server runs them as it has room).
    const limit = page.limits() && page.limits().job_max_upload_bytes;
    for (const file of files) {
      jobs.uploads.push({ file, fraction: 0, started: false,
                          error: limit && file.size > limit ? `larger than this server's ${limit} bytes` : null });
    }
    render();
    if (!jobs.uploading) uploadAll();
  }

  async function uploadAll() {
    jobs.uploading = true;
    for (let upload; (upload = jobs.uploads.find((u) => !u.started && !u.error));) {
      upload.started = true;
      try {
        await page.postVideo(upload.file, () => {}, (e) => {
          if (e.lengthComputable) { upload.fraction = e.loaded / e.total; render(); }
        });
        jobs.uploads.splice(jobs.uploads.indexOf(upload), 1);
      } catch (err) {
        upload.error = err.message;
      }
      await refresh();
    }
    jobs.uploading = false;
    jobs.uploads = jobs.uploads.filter((u) => u.error); // failed uploads stay listed with their error
    refresh();
  }

  document.addEventListener('vsr-key', refresh);
  document.addEventListener('vsr-job', refresh);
  refresh();
  return { queue, refresh };
})();
