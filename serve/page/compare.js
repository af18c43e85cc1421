// The before/after view of the page: one picture left of the divider (bicubic), another right of it
// (the model; in a model compare, any two results), on one canvas (so the divider is an
// <input type=range>), and a pixel-exact (nearest-neighbour) zoom.
'use strict';
window.vsrCompare = (() => {
  const $ = (id) => document.getElementById(id);
  const ZOOM = 48; // zoom crop, in pixels of the 3x picture
  const ZOOM_SCALE = 6; // each of them drawn as a 6x6 block
  const view = { bicubic: null, model: null, zoom: null };
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

  function canvasOf(source, width, height) {
    const canvas = document.createElement('canvas');
    canvas.width = width || source.videoWidth || source.width;
    canvas.height = height || source.videoHeight || source.height;
    const ctx = canvas.getContext('2d');
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
    return canvas;
  }

  async function canvasOfImage(blob) {
    const bitmap = await createImageBitmap(blob);
    const canvas = canvasOf(bitmap);
    bitmap.close();
    return canvas;
  }

  const toPng = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));

  function show(bicubic, model, name, rightName = 'model') {
    view.model = model;
    view.bicubic = bicubic && (bicubic.width !== model.width || bicubic.height !== model.height)
      ? canvasOf(bicubic, model.width, model.height) : bicubic;
    const compare = $('compare');
    compare.width = model.width;
    compare.height = model.height;
    if (!view.zoom) view.zoom = { x: model.width / 2, y: model.height / 2 };
    $('left-name').textContent = name;
    $('zoom-left-name').textContent = name;
    $('right-name').textContent = rightName;
    $('zoom-right-name').textContent = rightName;
    render();
  }

  function render() {
    if (!view.model) return;
    const compare = $('compare');
    const ctx = compare.getContext('2d');
    const { width, height } = compare;
    const value = Number($('split').value);
    const split = Math.round((width * value) / 100);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, width, height);
    if (view.bicubic) ctx.drawImage(view.bicubic, 0, 0, split, height, 0, 0, split, height);
    if (split < width) ctx.drawImage(view.model, split, 0, width - split, height, split, 0, width - split, height);
    $('divider').style.left = `${value}%`;
    renderZoom();
  }

  function renderZoom() {
    const { width, height } = view.model;
    const size = Math.min(ZOOM, width, height);
    const x = clamp(Math.round(view.zoom.x - size / 2), 0, width - size);
    const y = clamp(Math.round(view.zoom.y - size / 2), 0, height - size);
    view.zoom = { x: x + size / 2, y: y + size / 2 };
    for (const [id, source] of [['zoom-bicubic', view.bicubic], ['zoom-model', view.model]]) {
      const canvas = $(id);
      canvas.width = size * ZOOM_SCALE;
      canvas.height = size * ZOOM_SCALE;
      const ctx = canvas.getContext('2d');
      ctx.imageSmoothingEnabled = false; // nearest neighbour: each pixel a sharp block
      ctx.fillStyle = '#777';
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      if (source) ctx.drawImage(source, x, y, size, size, 0, 0, canvas.width, canvas.height);
    }
    Object.assign($('zoom-box').style, {
      left: `${(100 * x) / width}%`, top: `${(100 * y) / height}%`,
      width: `${(100 * size) / width}%`, height: `${(100 * size) / height}%`,
    });
  }

  $('split').addEventListener('input', render);

  $('compare').addEventListener('click', (event) => {
    if (!view.model) return;
    const rect = event.currentTarget.getBoundingClientRect();
    view.zoom = {
      x: ((event.clientX - rect.left) * view.model.width) / rect.width,
      y: ((event.clientY - rect.top) * view.model.height) / rect.height,
    };
    renderZoom();
  });

  $('compare').addEventListener('keydown', (event) => {
    const step = (event.shiftKey ? 4 : 1) * (ZOOM / 2);
    const move = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[event.key];
    if (!move || !view.model) return;
    event.preventDefault();
    view.zoom = { x: view.zoom.x + move[0], y: view.zoom.y + move[1] };
    renderZoom();
  });

  function clear() {
    Object.assign(view, { bicubic: null, model: null, zoom: null });
  }

  return { canvasOf, canvasOfImage, toPng, show, clear };
})();
