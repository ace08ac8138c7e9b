// The image list: filters, sorting, paging, live status, error signatures.
import { h, mount, bytes, age, when, link, route, debounce, statusPill, skeleton } from './util.js';
import * as api from './api.js';
import { img, ACTIVE } from './fields.js';

const PAGE = 25;
const STATUSES = ['', 'uploading', 'queued', 'analyzing', 'ready', 'failed'];
const COLUMNS = [
  ['ticket', 'Ticket', 'ticket'],
  ['status', 'Status', 'status'],
  ['fs', 'Filesystem', 'label'],
  ['size', 'Size', 'size'],
  ['features', 'Features', null],
  ['findings', 'Findings', 'findings_errors'],
  ['lasterr', 'Kernel last error', 'last_error_time'],
  ['age', 'Uploaded', 'created_at'],
];

function counts(i) {
  const e = img.errors(i), w = img.warnings(i);
  if (e === undefined && w === undefined) return h('span.muted', img.status(i) === 'ready' ? '—' : '');
  return h('span.nowrap',
    h('span.count', { class: e ? 'error' : 'zero', title: `${e ?? 0} errors` }, e ?? 0), ' ',
    h('span.count', { class: w ? 'warning' : 'zero', title: `${w ?? 0} warnings` }, w ?? 0));
}

// Features that change how metadata is laid out or checked come first.
const NOTABLE = ['metadata_csum', 'bigalloc', 'inline_data', 'encrypt', 'casefold', 'meta_bg', '64bit', 'ea_inode', 'large_dir', 'verity', 'project', 'quota', 'flex_bg', 'extent', 'has_journal', 'journal_dev'];

function features(i) {
  const f = [...img.features(i)].sort((a, b) => {
    const x = NOTABLE.indexOf(a), y = NOTABLE.indexOf(b);
    return (x < 0 ? 99 : x) - (y < 0 ? 99 : y);
  });
  const shown = f.slice(0, 3);
  const type = i.fs_type;
  return h('span', { title: f.join(' ') }, type ? h('b', { style: { marginRight: '4px', fontSize: '12px' } }, type) : null,
    shown.map((x) => h('span.tag', x)), f.length > shown.length ? h('span.muted', ` +${f.length - shown.length}`) : null);
}

function row(i, now) {
  const fn = img.lastErrorFunction(i);
  const line = img.lastErrorLine(i);
  const href = link(`images/${encodeURIComponent(img.id(i))}`);
  return h('tr.clickable', { dataset: { id: img.id(i), ticket: img.ticket(i) ?? '' }, onclick: (ev) => { if (!ev.target.closest('a')) location.hash = href; } },
    h('td.nowrap', h('a.mono', { href, class: 'img-link' }, img.ticket(i) || '(no ticket)'), h('div.muted.mono', { style: { fontSize: '11px' }, title: `image ${img.id(i)}` }, `#${String(img.id(i)).slice(0, 8)}`)),
    h('td', statusPill(img.status(i)), img.status(i) === 'failed' && img.reason(i) ? h('div.muted', { style: { fontSize: '11.5px', maxWidth: '220px' } }, img.reason(i)) : null),
    h('td', h('div', img.label(i) ? h('b', img.label(i)) : h('span.muted', '(no label)')), h('div.muted.mono.uuid', { title: img.uuid(i) || '' }, img.uuid(i) ? `${String(img.uuid(i)).slice(0, 13)}…` : '')),
    h('td.num.nowrap', h('div', bytes(img.fsSize(i))), h('div.muted', { style: { fontSize: '11px' }, title: 'stored QCOW2 image' }, `image ${bytes(img.imageSize(i))}`)),
    h('td.feat', features(i)),
    h('td.nowrap', counts(i)),
    h('td.mono', fn ? `${fn}${line ? ':' + line : ''}` : h('span.muted', '—')),
    h('td.nowrap', { title: when(img.created(i)) }, age(img.created(i), now)));
}

export async function listPage({ main, query }) {
  const state = {
    ticket: query.get('ticket') || '',
    status: query.get('status') || '',
    feature: query.get('feature') || '',
    error_function: query.get('error_function') || '',
    has_errors: query.get('has_errors') || '',
    sort: query.get('sort') || '-created_at',
    offset: Number(query.get('offset')) || 0,
  };
  let timer = null;
  let alive = true;
  let inflight = null;

  const tbody = h('tbody');
  const total = h('span.muted', { id: 'list-total' }, '');
  const pager = h('div.pager');
  const sigBox = h('div', { id: 'signatures', style: { minHeight: '120px' } }, skeleton(4));
  const sigScope = h('p.muted', { style: { fontSize: '12px' } });

  const input = (key, label, attrs = {}) => {
    const el = h('input', { type: 'search', value: state[key], id: `f-${key}`, name: key, ...attrs });
    el.addEventListener('input', debounce(() => { state[key] = el.value.trim(); state.offset = 0; sync(); }, 300));
    return h('label.field', { for: `f-${key}` }, label, el);
  };
  const statusSel = h('select', { id: 'f-status', name: 'status', onchange: () => { state.status = statusSel.value; state.offset = 0; sync(); } },
    STATUSES.map((s) => h('option', { value: s, selected: s === state.status }, s || 'any')));
  const hasErr = h('input', { type: 'checkbox', id: 'f-has_errors', checked: state.has_errors === 'true', onchange: () => { state.has_errors = hasErr.checked ? 'true' : ''; state.offset = 0; sync(); } });

  const head = h('tr', COLUMNS.map(([key, label, sortKey]) => {
    if (!sortKey) return h('th', label);
    const active = state.sort.replace(/^-/, '') === sortKey;
    const b = h('button.sort', { type: 'button', dataset: { key: sortKey, dir: active ? (state.sort.startsWith('-') ? 'desc' : 'asc') : '' }, 'aria-sort': active ? 'true' : null,
      onclick: () => {
        state.sort = state.sort === `-${sortKey}` ? sortKey : `-${sortKey}`;
        state.offset = 0;
        sync();
      } }, label);
    return h('th', { 'aria-sort': active ? (state.sort.startsWith('-') ? 'descending' : 'ascending') : null }, b);
  }));

  mount(main, h('div.list-layout',
    h('section.stack', { 'aria-labelledby': 'list-h' },
      h('div.row', h('h1', { id: 'list-h' }, 'Images'), total, h('div.spacer'), h('a.btn', { href: '#/upload' }, '⇪ Upload an image')),
      h('div.card', h('form.filters', { role: 'search', onsubmit: (e) => e.preventDefault() },
        input('ticket', 'Ticket (exact)', { placeholder: 'e.g. CASE-1234', autofocus: true }),
        h('label.field', { for: 'f-status' }, 'Status', statusSel),
        input('feature', 'Feature', { placeholder: 'e.g. metadata_csum' }),
        input('error_function', 'Kernel error function', { placeholder: 'e.g. ext4_mb_generate_buddy' }),
        h('label.check', { style: { paddingBottom: '6px' } }, hasErr, 'has errors'))),
      h('div.card', { style: { padding: 0 } },
        h('div.table-wrap', h('table.images', { id: 'images' }, h('thead', head), tbody)),
        h('div', { style: { padding: '8px 12px' } }, pager))),
    h('aside.card', { 'aria-labelledby': 'sig-h' },
      h('h2', { id: 'sig-h' }, 'Seen before? Kernel error signatures'),
      h('p.muted', { style: { marginTop: 0, fontSize: '12.5px' } }, 'Images grouped by the last error the kernel recorded in the superblock (function and line). Click one to filter.'),
      sigBox, sigScope)));

  tbody.append(...Array.from({ length: 6 }, () => h('tr', h('td', { colspan: COLUMNS.length }, skeleton(1, '28px')))));

  function params() {
    const p = { sort: state.sort, offset: state.offset, limit: PAGE };
    for (const k of ['ticket', 'status', 'feature', 'error_function', 'has_errors']) if (state[k]) p[k] = state[k];
    return p;
  }

  function sync() {
    const q = {};
    for (const [k, v] of Object.entries(state)) if (v && !(k === 'sort' && v === '-created_at')) q[k] = v;
    window.__softNav = true;
    history.replaceState(null, '', link('images', q));
    window.__softNav = false;
    for (const b of head.querySelectorAll('button.sort')) {
      const active = state.sort.replace(/^-/, '') === b.dataset.key;
      b.dataset.dir = active ? (state.sort.startsWith('-') ? 'desc' : 'asc') : '';
      if (active) b.setAttribute('aria-sort', 'true'); else b.removeAttribute('aria-sort');
    }
    load();
  }

  async function load() {
    clearTimeout(timer);
    if (inflight) inflight.abort();
    const ctl = inflight = new AbortController();
    let data;
    try {
      data = await api.listImages(params(), { signal: ctl.signal });
    } catch (e) {
      if (e.name === 'AbortError' || !alive) return;
      mount(tbody, h('tr', h('td.empty', { colspan: COLUMNS.length }, `Cannot load images: ${e.message}`)));
      timer = setTimeout(load, 5000);
      return;
    }
    if (!alive || ctl !== inflight) return;
    const list = data.images || [];
    const n = data.total ?? list.length;
    total.textContent = `${n.toLocaleString('en-US')} image${n === 1 ? '' : 's'}`;
    const now = Date.now();
    if (!list.length) mount(tbody, h('tr', h('td.empty', { colspan: COLUMNS.length }, 'No image matches these filters.')));
    else mount(tbody, list.map((i) => row(i, now)));
    const first = n ? state.offset + 1 : 0, last = Math.min(state.offset + list.length, n);
    mount(pager,
      h('span.muted', `${first}–${last} of ${n.toLocaleString('en-US')}`),
      h('button', { type: 'button', id: 'page-prev', disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - PAGE); sync(); } }, '‹ Previous'),
      h('button', { type: 'button', id: 'page-next', disabled: last >= n, onclick: () => { state.offset += PAGE; sync(); } }, 'Next ›'));
    // Live while anything on the page is still moving through ingest.
    const moving = list.some((i) => ACTIVE.includes(img.status(i)));
    timer = setTimeout(load, moving ? 1500 : 5000);
  }

  async function loadSignatures() {
    // Grouped here from the most recent images (the API pages at 1,000).
    let sigs;
    try {
      const d = await api.listImages({ limit: 1000, sort: '-created_at' });
      const m = new Map();
      for (const i of d.images || []) {
        const fn = img.lastErrorFunction(i);
        if (!fn) continue;
        const key = `${fn}:${img.lastErrorLine(i) ?? ''}`;
        const s = m.get(key) || { fn, line: img.lastErrorLine(i), count: 0, tickets: new Set() };
        s.count++;
        if (img.ticket(i)) s.tickets.add(img.ticket(i));
        m.set(key, s);
      }
      sigs = [...m.values()].map((s) => ({ ...s, tickets: [...s.tickets] })).sort((a, b) => b.count - a.count);
      sigScope.textContent = (d.total ?? 0) > (d.images || []).length ? `Among the ${(d.images || []).length.toLocaleString('en-US')} most recent images.` : '';
    } catch (e) {
      mount(sigBox, h('p.muted', `Cannot load: ${e.message}`));
      return;
    }
    if (!alive) return;
    if (!sigs.length) { mount(sigBox, h('p.muted', 'No image records a kernel error yet.')); return; }
    mount(sigBox, h('ul.sig-list', sigs.map((s) => h('li',
      h('button', { type: 'button', class: 'sig', dataset: { fn: s.fn }, title: Array.isArray(s.tickets) && s.tickets.length ? `tickets: ${s.tickets.join(', ')}` : '',
        onclick: () => {
          state.error_function = s.fn; state.offset = 0;
          const el = document.getElementById('f-error_function'); if (el) el.value = s.fn;
          sync();
        } },
      h('span.mono', `${s.fn}${s.line ? ':' + s.line : ''}`),
      h('span.count.info', { title: `${s.count} images${s.tickets.length ? ': ' + s.tickets.join(', ') : ''}` }, s.count))))));
  }

  load();
  loadSignatures();
  return () => { alive = false; clearTimeout(timer); if (inflight) inflight.abort(); };
}
