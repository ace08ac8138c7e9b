// Small DOM and formatting helpers shared by the pages.

/**
 * Builds an element: h('a.btn', {href: '#'}, 'text', child).
 * Attributes starting with "on" become listeners; `dataset`/`style` objects merge.
 */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name || 'div');
  if (classes.length) el.className = classes.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'class') el.className += (el.className ? ' ' : '') + v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 -> "1.5 KiB". */
export function bytes(n) {
  if (n === undefined || n === null || Number.isNaN(Number(n))) return '—';
  n = Number(n);
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${UNITS[i]}`;
}

/** 12345678 -> "12,345,678". */
export function num(n) {
  if (n === undefined || n === null || n === '') return '—';
  const v = Number(n);
  return Number.isFinite(v) ? v.toLocaleString('en-US') : String(n);
}

/** Parses an RFC 3339 string, a unix time in seconds, or a Date. */
export function toDate(t) {
  if (t === undefined || t === null || t === '' || t === 0) return null;
  if (t instanceof Date) return t;
  if (typeof t === 'number') return new Date(t < 1e12 ? t * 1000 : t);
  if (/^\d+$/.test(t)) return toDate(Number(t));
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "3 min ago". */
export function age(t, now = Date.now()) {
  const d = toDate(t);
  if (!d) return '—';
  let s = Math.max(0, Math.round((now - d.getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if ((s = Math.round(s / 60)) < 60) return `${s} min ago`;
  if ((s = Math.round(s / 60)) < 48) return `${s} h ago`;
  return `${Math.round(s / 24)} d ago`;
}

/** ISO date-time, minutes precision, UTC. */
export function when(t) {
  const d = toDate(t);
  return d ? d.toISOString().replace('T', ' ').slice(0, 16) + ' UTC' : '—';
}

/** Reads the hash route: "#/images/7?tab=groups" -> {path: ['images','7'], query}. */
export function route() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [p, q] = raw.split('?');
  return { path: p.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(q || '') };
}

/** Builds "#/images?x=1" skipping empty values. */
export function link(path, query = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return `#/${path}${s ? '?' + s : ''}`;
}

/** Debounces a function. */
export function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

/** First defined value among an object's keys (API field names tolerated). */
export function pick(o, ...keys) {
  if (!o) return undefined;
  for (const k of keys) if (o[k] !== undefined && o[k] !== null) return o[k];
  return undefined;
}

/** A coloured status pill. */
export function statusPill(status) {
  const s = String(status || 'unknown');
  return h('span.pill', { class: `st-${s.replace(/[^a-z_-]/gi, '')}`, title: s },
    ['uploading', 'queued', 'analyzing'].includes(s) ? h('span.spin', { 'aria-hidden': 'true' }) : null, s);
}

/** A skeleton placeholder with a reserved height. */
export function skeleton(lines = 3, height = '1.2em') {
  return h('div.skeleton', { 'aria-busy': 'true', 'aria-label': 'Loading' },
    Array.from({ length: lines }, () => h('div.sk-line', { style: { height } })));
}

/** Shows a transient message at the bottom of the page. */
export function toast(msg, kind = 'info') {
  let box = document.getElementById('toasts');
  if (!box) document.body.append(box = h('div', { id: 'toasts', role: 'status', 'aria-live': 'polite' }));
  const t = h('div.toast', { class: kind }, msg);
  box.append(t);
  setTimeout(() => t.remove(), 4000);
}
