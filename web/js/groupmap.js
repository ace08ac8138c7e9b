// The group map: one cell per block group on a <canvas>, so 16 groups and
// 100,000 read the same way and draw in milliseconds. Hover and click
// identify a group; arrow keys move the selection.
import { h, num } from './util.js';

/**
 * A group's checksum state: 0 none recorded, 1 all match, 2 a failure.
 * Stored values sit next to what they should be (`checksum` and
 * `checksum_expected`, the same for the block and inode bitmaps).
 */
export function checksumState(g) {
  if (!g) return 0;
  let seen = false;
  for (const k of ['checksum', 'block_bitmap_checksum', 'inode_bitmap_checksum']) {
    const have = g[k], want = g[`${k}_expected`];
    if (have === undefined || have === null) continue;
    seen = true;
    if (want !== undefined && want !== null && want !== have) return 2;
  }
  const c = g.checksums;
  if (c !== undefined && c !== null) {
    const bad = (v) => v === false || (typeof v === 'string' && /bad|mismatch|invalid|fail|wrong/i.test(v));
    if (typeof c === 'object' ? Object.values(c).some(bad) : bad(c)) return 2;
    seen = true;
  }
  return seen ? 1 : 0;
}

/** Which of a group's checksums fail, by name. */
export function checksumFailures(g) {
  const out = [];
  if (!g) return out;
  for (const [k, name] of [['checksum', 'descriptor'], ['block_bitmap_checksum', 'block bitmap'], ['inode_bitmap_checksum', 'inode bitmap']]) {
    const have = g[k], want = g[`${k}_expected`];
    if (have !== undefined && have !== null && want !== undefined && want !== null && want !== have) out.push(name);
  }
  return out;
}

/** Group flags as a list of names. */
export function flagList(g) {
  const f = g && g.flags;
  if (!f) return [];
  if (Array.isArray(f)) return f.map(String);
  if (typeof f === 'number') {
    const n = [];
    if (f & 1) n.push('INODE_UNINIT');
    if (f & 2) n.push('BLOCK_UNINIT');
    if (f & 4) n.push('ITABLE_ZEROED');
    return n;
  }
  return String(f).split(/[\s,|\[\]]+/).filter(Boolean);
}

function flagCode(g) {
  const f = flagList(g).join(' ').toUpperCase();
  const iu = f.includes('INODE_UNINIT'), bu = f.includes('BLOCK_UNINIT');
  return bu && iu ? 3 : bu ? 2 : iu ? 1 : 0;
}

export const MODES = [
  ['free', 'Free blocks'],
  ['inodes', 'Free inodes'],
  ['flags', 'Flags'],
  ['csum', 'Checksums'],
  ['findings', 'Findings'],
];

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Full (0 free) is dark red, half is amber, empty (all free) is pale green:
// "which groups are full" reads at a glance. 256-step lookup tables.
function makeRamp(dark) {
  const stops = dark
    ? [[214, 64, 58], [214, 150, 50], [43, 77, 52]]
    : [[179, 38, 30], [242, 177, 52], [207, 232, 212]];
  const lut = new Uint32Array(256);
  for (let k = 0; k < 256; k++) {
    const t = k / 255;
    const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t * 2] : [stops[1], stops[2], (t - 0.5) * 2];
    lut[k] = rgb(a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u, a[2] + (b[2] - a[2]) * u);
  }
  return lut;
}

function rgb(r, g, b) { return (Math.round(r) << 16) | (Math.round(g) << 8) | Math.round(b); }
function hex(c) { return `#${c.toString(16).padStart(6, '0')}`; }
function parseColour(s) {
  const m = /^#([0-9a-f]{6})$/i.exec(s.trim());
  return m ? parseInt(m[1], 16) : 0x888888;
}

/**
 * Creates a group map.
 * opts: { count, blocksPerGroup, inodesPerGroup, onSelect(g), findingsByGroup: Map }
 * Returns { el, setGroups(offset, list), select(g, focus), redraw(), mode }.
 */
export function groupMap(opts) {
  const count = opts.count;
  const groups = new Array(count);
  const free = new Float32Array(count).fill(NaN);
  const finodes = new Float32Array(count).fill(NaN);
  const flags = new Uint8Array(count).fill(255);
  const csum = new Uint8Array(count).fill(255);
  const fcount = new Uint16Array(count);
  for (const [g, list] of opts.findingsByGroup || []) if (g < count) fcount[g] = Math.min(65535, list.length);
  let mode = 'free';
  let selected = -1;
  let hover = -1;
  let layout = { s: 10, gap: 1, cols: 1, rows: 1, w: 0, h: 0 };
  const dark = matchMedia('(prefers-color-scheme: dark)').matches;
  const RAMP = makeRamp(dark);
  const rampAt = (t) => RAMP[Math.max(0, Math.min(255, Math.round(t * 255)))];

  const canvas = h('canvas.gmap', { tabindex: 0, role: 'img', id: 'group-map', 'aria-label': `Group map of ${count} block groups. Use the arrow keys to move between groups, Enter to show the selected group in the table.`, dataset: { cells: count } });
  const tip = h('div.gmap-tip', { hidden: true });
  const live = h('div.gsel', { id: 'group-selected', 'aria-live': 'polite' }, h('span.muted', 'Hover or click a cell, or focus the map and use the arrow keys.'));
  const legend = h('div.legend', { id: 'gmap-legend' });
  const seg = h('div.seg', { role: 'group', 'aria-label': 'Colour the map by' }, MODES.map(([k, label]) =>
    h('button', { type: 'button', dataset: { mode: k }, 'aria-pressed': String(k === mode), onclick: () => setMode(k) }, label)));
  const loaded = h('span.muted', { id: 'gmap-loaded', style: { fontSize: '12px' } }, '');
  const wrap = h('div.gmap-wrap', canvas, tip);
  const el = h('div',
    h('div.gmap-bar', seg, legend, h('div.spacer'), loaded),
    wrap, live);

  function setMode(m) {
    mode = m;
    for (const b of seg.children) b.setAttribute('aria-pressed', String(b.dataset.mode === m));
    canvas.dataset.mode = m;
    drawLegend();
    draw();
  }

  function drawLegend() {
    const sw = (c, t) => h('span', h('span.sw', { style: { background: hex(c) } }), t);
    if (mode === 'free' || mode === 'inodes') {
      const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => hex(rampAt(t))).join(',');
      legend.replaceChildren(h('span', 'full'), h('span.ramp', { style: { background: `linear-gradient(90deg,${stops})` } }), h('span', mode === 'free' ? 'all blocks free' : 'all inodes free'));
    } else if (mode === 'flags') {
      legend.replaceChildren(sw(flagColour(0), 'initialised'), sw(flagColour(1), 'INODE_UNINIT'), sw(flagColour(2), 'BLOCK_UNINIT'), sw(flagColour(3), 'both uninit'));
    } else if (mode === 'csum') {
      legend.replaceChildren(sw(csumColour(1), 'checksums ok'), sw(csumColour(2), 'checksum failure'), sw(csumColour(0), 'none / unknown'));
    } else {
      legend.replaceChildren(sw(findColour(0), 'no findings'), sw(findColour(1), '1'), sw(findColour(5), '5+'));
    }
  }

  const FLAG = dark ? [0x3b6a8f, 0x5b4f8c, 0x7a5fa8, 0x3a414c] : [0x4f86c6, 0x8fb6e0, 0xb9a3df, 0xe4e7ec];
  const flagColour = (c) => FLAG[c];
  const CSUM = dark ? [0x2b3038, 0x2f5e3a, 0xe5534b] : [0xe4e7ec, 0xa9d8b0, 0xd32f2f];
  const csumColour = (c) => CSUM[c];
  const findColour = (n) => (n === 0 ? (dark ? 0x2b3038 : 0xe4e7ec) : n >= 5 ? (dark ? 0xe5534b : 0xc62828) : (dark ? 0xd9822b : 0xef8f2f));

  /** Cell colour as 0xRRGGBB, or -1 while the group is not loaded. */
  function colour(i) {
    switch (mode) {
      case 'free': return Number.isNaN(free[i]) ? -1 : rampAt(free[i]);
      case 'inodes': return Number.isNaN(finodes[i]) ? -1 : rampAt(finodes[i]);
      case 'flags': return flags[i] === 255 ? -1 : flagColour(flags[i]);
      case 'csum': return csum[i] === 255 ? -1 : csumColour(csum[i]);
      default: return groups[i] === undefined ? -1 : findColour(fcount[i]);
    }
  }

  function computeLayout() {
    const w = Math.max(200, wrap.clientWidth || 800);
    const maxH = Math.max(240, Math.min(520, window.innerHeight * 0.5));
    let s = Math.floor(Math.sqrt((w * maxH) / count));
    s = Math.max(2, Math.min(56, s));
    const gap = s >= 12 ? 2 : s >= 5 ? 1 : 0;
    const cols = Math.max(1, Math.min(count, Math.floor((w + gap) / (s + gap))));
    const rows = Math.ceil(count / cols);
    layout = { s, gap, cols, rows, w: cols * (s + gap) - gap, h: rows * (s + gap) - gap };
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(layout.w * dpr);
    canvas.height = Math.round(layout.h * dpr);
    canvas.style.width = `${layout.w}px`;
    canvas.style.height = `${layout.h}px`;
    Object.assign(canvas.dataset, { cols: layout.cols, cell: layout.s, gap: layout.gap });
  }

  // Cells are written straight into an ImageData (one pass over the pixels),
  // then labels and outlines on top: 100,000 groups draw in a few ms.
  let drawQueued = false;
  function draw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => { drawQueued = false; drawNow(); });
  }

  function drawNow() {
    const ctx = canvas.getContext('2d');
    const W = canvas.width, H = canvas.height;
    if (!W || !H) return;
    const dpr = W / layout.w;
    const { s, gap, cols } = layout;
    const pending = parseColour(css('--sk'));
    const bg = ctx.createImageData(W, H);
    const px = new Uint32Array(bg.data.buffer);
    // ImageData is RGBA in memory order: little-endian 0xAABBGGRR.
    const pack = (c) => 0xff000000 | ((c & 0xff) << 16) | (c & 0xff00) | ((c >> 16) & 0xff);
    const pitch = (s + gap) * dpr;
    const cw = Math.max(1, Math.round(s * dpr));
    for (let i = 0; i < count; i++) {
      const c = colour(i);
      const v = pack(c < 0 ? pending : c);
      const x0 = Math.round((i % cols) * pitch), y0 = Math.round(Math.floor(i / cols) * pitch);
      const x1 = Math.min(W, x0 + cw), y1 = Math.min(H, y0 + cw);
      for (let y = y0; y < y1; y++) px.fill(v, y * W + x0, y * W + x1);
    }
    ctx.putImageData(bg, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (s >= 24) {
      ctx.fillStyle = dark ? 'rgba(255,255,255,.85)' : 'rgba(0,0,0,.7)';
      ctx.font = `${Math.min(12, s / 3)}px system-ui, sans-serif`;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      for (let i = 0; i < count; i++) ctx.fillText(String(i), (i % cols) * (s + gap) + s / 2, Math.floor(i / cols) * (s + gap) + s / 2);
    }
    // Groups with findings get a corner mark in every other mode.
    if (mode !== 'findings' && s >= 8) {
      ctx.fillStyle = dark ? '#ff6b6b' : '#c62828';
      for (let i = 0; i < count; i++) if (fcount[i]) ctx.fillRect((i % cols) * (s + gap) + s - 4, Math.floor(i / cols) * (s + gap), 4, 4);
    }
    for (const [i, col] of [[hover, dark ? '#ffffff' : '#000000'], [selected, css('--accent')]]) {
      if (i < 0) continue;
      const x = (i % cols) * (s + gap), y = Math.floor(i / cols) * (s + gap);
      ctx.lineWidth = 2;
      ctx.strokeStyle = col;
      const pad = s < 6 ? 2 : 0;
      ctx.strokeRect(x - 1 - pad, y - 1 - pad, s + 2 + 2 * pad, s + 2 + 2 * pad);
    }
    canvas.dataset.drawn = String(have);
  }

  function at(ev) {
    const r = canvas.getBoundingClientRect();
    const { s, gap, cols } = layout;
    const x = ev.clientX - r.left, y = ev.clientY - r.top;
    const c = Math.floor(x / (s + gap)), rr = Math.floor(y / (s + gap));
    if (c < 0 || c >= cols || rr < 0) return -1;
    const i = rr * cols + c;
    return i < count ? i : -1;
  }

  function describe(i, full) {
    const g = groups[i];
    if (!g) return [h('b', `Group ${num(i)}`), ' ', h('span.muted', 'loading…')];
    const bpg = (g.last_block ?? 0) - (g.first_block ?? 0) + 1;
    const parts = [
      h('b', `Group ${num(i)}`),
      h('span', `blocks ${num(g.first_block)}–${num(g.last_block)}`),
      h('span', h('b', num(g.free_blocks)), ` free blocks (${bpg > 0 ? Math.round((100 * g.free_blocks) / bpg) : '?'}%)`),
      h('span', h('b', num(g.free_inodes)), ' free inodes'),
    ];
    const fl = flagList(g);
    parts.push(h('span', fl.length ? fl.join(' ') : 'no flags'));
    const cs = checksumState(g);
    parts.push(h('span', { style: { color: cs === 2 ? css('--err') : '' } }, cs === 2 ? `checksum failure: ${checksumFailures(g).join(', ') || 'see findings'}` : cs === 1 ? 'checksums ok' : 'no checksums'));
    if (fcount[i]) parts.push(h('span', { style: { color: css('--err') } }, `${fcount[i]} finding${fcount[i] > 1 ? 's' : ''}`));
    if (full) parts.push(h('span', `directories ${num(g.directories)}`), h('span', `unused inodes ${num(g.unused_inodes)}`),
      h('span', `bitmaps ${num(g.block_bitmap)} / ${num(g.inode_bitmap)}`), h('span', `inode table ${num(g.inode_table)}${g.inode_table_last ? '–' + num(g.inode_table_last) : ''}`));
    return parts;
  }

  function showTip(i, ev) {
    if (i < 0) { tip.hidden = true; return; }
    tip.replaceChildren(h('div.kvline', { style: { display: 'flex', flexDirection: 'column', gap: '1px' } }, describe(i, false)));
    tip.hidden = false;
    const r = wrap.getBoundingClientRect();
    let x = ev.clientX - r.left + 14, y = ev.clientY - r.top + 14;
    if (x + 260 > r.width) x = Math.max(0, ev.clientX - r.left - 270);
    tip.style.left = `${x}px`;
    tip.style.top = `${y}px`;
  }

  function select(i, { focus = false, notify = true } = {}) {
    if (i < 0 || i >= count) return;
    selected = i;
    canvas.dataset.selected = String(i);
    live.replaceChildren(h('div.kvline', describe(i, true)));
    draw();
    if (focus) {
      canvas.focus({ preventScroll: true });
      const y = Math.floor(i / layout.cols) * (layout.s + layout.gap);
      const r = canvas.getBoundingClientRect();
      const top = window.scrollY + r.top + y - window.innerHeight / 3;
      window.scrollTo({ top: Math.max(0, top), behavior: 'instant' });
    }
    if (notify && opts.onSelect) opts.onSelect(i);
  }

  canvas.addEventListener('mousemove', (ev) => {
    const i = at(ev);
    if (i !== hover) { hover = i; draw(); }
    showTip(i, ev);
  });
  canvas.addEventListener('mouseleave', () => { hover = -1; tip.hidden = true; draw(); });
  canvas.addEventListener('click', (ev) => { const i = at(ev); if (i >= 0) select(i); });
  canvas.addEventListener('keydown', (ev) => {
    const { cols } = layout;
    const cur = selected < 0 ? 0 : selected;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols, PageDown: cols * 10, PageUp: -cols * 10 };
    let next = null;
    if (ev.key in moves) next = selected < 0 ? 0 : cur + moves[ev.key];
    else if (ev.key === 'Home') next = 0;
    else if (ev.key === 'End') next = count - 1;
    else if (ev.key === 'Enter' && selected >= 0 && opts.onActivate) { opts.onActivate(selected); ev.preventDefault(); return; }
    if (next === null) return;
    ev.preventDefault();
    select(Math.max(0, Math.min(count - 1, next)));
  });
  let resizeT;
  new ResizeObserver(() => {
    clearTimeout(resizeT);
    resizeT = setTimeout(() => { computeLayout(); drawNow(); }, 60);
  }).observe(wrap);

  let have = 0;
  function setGroups(offset, list) {
    const bpgDefault = opts.blocksPerGroup || 0, ipg = opts.inodesPerGroup || 0;
    for (let k = 0; k < list.length; k++) {
      const g = list[k];
      const i = Number.isInteger(g.group) ? g.group : offset + k;
      if (i < 0 || i >= count) continue;
      if (groups[i] === undefined) have++;
      groups[i] = g;
      const bpg = g.last_block !== undefined && g.first_block !== undefined ? g.last_block - g.first_block + 1 : bpgDefault;
      free[i] = bpg > 0 ? Number(g.free_blocks) / bpg : NaN;
      finodes[i] = ipg > 0 ? Number(g.free_inodes) / ipg : NaN;
      flags[i] = flagCode(g);
      csum[i] = checksumState(g);
    }
    loaded.textContent = have < count ? `${num(have)} of ${num(count)} groups loaded` : `${num(count)} groups`;
    draw();
    if (selected >= 0 && selected >= offset && selected < offset + list.length) live.replaceChildren(h('div.kvline', describe(selected, true)));
  }

  // Layout needs the element in the document: callers append el, then init().
  function init() {
    computeLayout();
    drawLegend();
    canvas.dataset.mode = mode;
    drawNow();
  }

  return { el, init, setGroups, select, group: (i) => groups[i], get loadedCount() { return have; }, setMode };
}
