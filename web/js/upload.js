// Upload from the browser through the same protocol as the agent
// (docs/upload-protocol.md): create an upload for a ticket, send chunks by
// offset with their SHA-256, ask which ranges the server holds to resume,
// complete with the whole file's SHA-256 (hashed incrementally while reading).
import { h, mount, bytes, link, toast } from './util.js';
import * as api from './api.js';
import { Sha256, digestHex } from './sha256.js';

const DEFAULT_CHUNK = 4 << 20;
const PARALLEL = 3; // the server advertises limits.concurrency; 3 keeps the page responsive
const MAGIC_QCOW = [0x51, 0x46, 0x49, 0xfb];

function resumeKey(ticket, file) {
  return `upload:${ticket}:${file.name}:${file.size}:${file.lastModified}`;
}

/** Byte ranges [start, end) the server already holds. */
function normaliseRanges(r) {
  const list = Array.isArray(r) ? r : (r && (r.ranges || r.present || r.received)) || [];
  return list.map((x) => (Array.isArray(x) ? [Number(x[0]), Number(x[1])] : [Number(x.start ?? x.offset), Number(x.end ?? (Number(x.offset) + Number(x.length)))]))
    .filter(([a, b]) => Number.isFinite(a) && Number.isFinite(b) && b > a);
}

function covered(ranges, a, b) {
  return ranges.some(([s, e]) => s <= a && e >= b);
}

/**
 * Uploads `file` for `ticket`; `onProgress({sent, skipped, total, phase})`.
 * Returns the server's answer to completion (holding the image id).
 */
export async function uploadFile(file, ticket, onProgress, signal) {
  const key = resumeKey(ticket, file);
  let up = null;
  let ranges = [];
  const saved = localStorage.getItem(key);
  if (saved) {
    try {
      const st = await api.get(`uploads/${encodeURIComponent(saved)}`);
      if (st.status && st.status !== 'uploading') throw new Error('already complete');
      up = { ...st, id: st.id ?? st.upload_id ?? saved };
      ranges = normaliseRanges(st);
    } catch { localStorage.removeItem(key); }
  }
  if (!up) {
    const created = await api.request('POST', 'uploads', { body: { ticket, size: file.size, name: file.name } });
    up = { ...created, id: created.id ?? created.upload_id };
    localStorage.setItem(key, up.id);
  }
  const max = Number(up.limits?.max_chunk_size ?? up.chunk_size);
  const chunk = max > 0 ? Math.min(max, DEFAULT_CHUNK) : DEFAULT_CHUNK;
  const total = file.size;
  const whole = new Sha256();
  let sent = 0, skipped = 0;
  const inflight = new Set();
  onProgress({ sent, skipped, total, phase: 'uploading' });

  for (let off = 0; off < total; off += chunk) {
    if (signal?.aborted) throw new DOMException('Upload paused', 'AbortError');
    const end = Math.min(total, off + chunk);
    const buf = new Uint8Array(await file.slice(off, end).arrayBuffer());
    whole.update(buf);
    if (covered(ranges, off, end)) {
      skipped += buf.length;
      onProgress({ sent, skipped, total, phase: 'uploading' });
      continue;
    }
    const p = (async () => {
      const sha = await digestHex(buf);
      await api.request('PUT', `uploads/${encodeURIComponent(up.id)}/chunks/${off}`, {
        body: buf,
        headers: { 'Content-Type': 'application/octet-stream', 'X-Chunk-Sha256': sha },
        signal,
      });
      sent += buf.length;
      onProgress({ sent, skipped, total, phase: 'uploading' });
    })();
    inflight.add(p);
    p.finally(() => inflight.delete(p));
    if (inflight.size >= PARALLEL) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  onProgress({ sent, skipped, total, phase: 'completing' });
  window.__lastUpload = { id: up.id, sent, skipped, total };
  const done = await api.request('POST', `uploads/${encodeURIComponent(up.id)}/complete`, { body: { sha256: whole.hex() } });
  localStorage.removeItem(key);
  return done;
}

export async function uploadPage({ main, query }) {
  let ctl = null;
  const ticket = h('input', { type: 'text', id: 'up-ticket', name: 'ticket', required: true, value: query.get('ticket') || '', placeholder: 'e.g. CASE-1234', autocomplete: 'off' });
  const fileInput = h('input', { type: 'file', id: 'up-file', accept: '.qcow2,.img,.qcow,application/octet-stream', style: { display: 'none' } });
  const chosen = h('div.muted', { id: 'up-chosen' }, 'No file chosen.');
  const bar = h('div');
  const progress = h('div.progress', { role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': 0, id: 'up-progress' }, bar);
  const status = h('div.up-status', { id: 'up-status', 'aria-live': 'polite' });
  const start = h('button.primary', { type: 'submit', id: 'up-start', disabled: true }, 'Upload');
  const pause = h('button', { type: 'button', id: 'up-pause', hidden: true, onclick: () => ctl?.abort() }, 'Pause');
  let file = null;

  const choose = async (f) => {
    file = f;
    if (!f) return;
    const head = new Uint8Array(await f.slice(0, 4).arrayBuffer());
    const isQcow = MAGIC_QCOW.every((b, k) => head[k] === b);
    mount(chosen, h('b', f.name), ` · ${bytes(f.size)}`, isQcow ? h('span.muted', ' · QCOW2 image') : h('span', { style: { color: 'var(--warn)' } }, ' · not a QCOW2 file: the server will reject it unless it is one'));
    start.disabled = false;
  };
  fileInput.addEventListener('change', () => choose(fileInput.files[0]));
  const drop = h('div.drop', { id: 'up-drop', tabindex: 0, role: 'button', 'aria-label': 'Choose or drop an image file',
    onclick: () => fileInput.click(),
    onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } },
    ondragover: (e) => { e.preventDefault(); drop.classList.add('over'); },
    ondragleave: () => drop.classList.remove('over'),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove('over'); choose(e.dataTransfer.files[0]); } },
  h('div', { style: { fontSize: '28px' } }, '⇪'),
  h('div', h('b', 'Drop an image here'), ' or click to choose one'),
  h('div', { style: { fontSize: '12.5px', marginTop: '6px' } }, 'An agent export or an ', h('code', 'e2image -Q'), ' QCOW2 image. Interrupted uploads resume where they stopped.'));

  const form = h('form.card.stack', { id: 'upload-form', style: { maxWidth: '760px' }, onsubmit: async (ev) => {
    ev.preventDefault();
    if (!file || !ticket.value.trim()) { toast('Choose a file and a ticket first.', 'error'); return; }
    ctl = new AbortController();
    start.disabled = true; pause.hidden = false;
    const t0 = performance.now();
    try {
      const res = await uploadFile(file, ticket.value.trim(), ({ sent, skipped, total, phase }) => {
        const pct = total ? Math.floor((100 * (sent + skipped)) / total) : 100;
        bar.style.width = `${pct}%`;
        progress.setAttribute('aria-valuenow', pct);
        const rate = sent / Math.max(0.001, (performance.now() - t0) / 1000);
        status.textContent = phase === 'completing' ? 'Verifying the whole image on the server…'
          : `${bytes(sent + skipped)} of ${bytes(total)} (${pct}%)${skipped ? ` · ${bytes(skipped)} already on the server` : ''} · ${bytes(rate)}/s`;
      }, ctl.signal);
      const imageId = res?.image_id ?? res?.image?.id ?? res?.id;
      mount(status, 'Uploaded and verified. ', imageId !== undefined ? h('a', { href: link(`images/${imageId}`), id: 'up-done' }, 'Open the image') : h('a', { href: link('images', { ticket: ticket.value.trim() }), id: 'up-done' }, 'Show the ticket\u2019s images'));
      status.dataset.done = 'true';
    } catch (e) {
      status.textContent = e.name === 'AbortError' ? 'Paused. Upload again with the same file and ticket to resume.' : `Upload failed: ${e.message}`;
    } finally {
      start.disabled = false; pause.hidden = true;
    }
  } },
  h('h1', 'Upload an image'),
  h('label.field', { for: 'up-ticket' }, 'Ticket', ticket),
  drop, fileInput, chosen, progress, status,
  h('div.row', start, pause));
  mount(main, form);
  ticket.focus();
  return () => ctl?.abort();
}
