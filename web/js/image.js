// One image: header and downloads, superblock in sections, findings, the
// group map and table, directory browser and inode view, triage.
import { h, mount, bytes, num, when, age, link, route, statusPill, skeleton, toast } from './util.js';
import * as api from './api.js';
import { img, ACTIVE } from './fields.js';
import { groupMap, flagList, checksumState, checksumFailures } from './groupmap.js';

const TRIAGE = ['new', 'investigating', 'waiting', 'resolved', 'archived'];
const GROUP_PAGE = 50;

// Superblock keys (dumpe2fs -h labels in snake_case) into sections.
const SECTIONS = [
  ['journal', 'Journal', /journal|transaction|fast_commit/],
  ['errors', 'State and errors', /state|error|mount_count|mount_time|write_time|checked|check_interval|next_check|lifetime|mmp|orphan|snapshot/],
  ['features', 'Features', /feature|flags|mount_options|hash|checksum|csum|encoding|encryption/],
  ['identity', 'Identity', /volume_name|uuid|magic|revision|os_type|last_mounted|created|^mount_opts|backup_/],
  ['geometry', 'Geometry', /count|size|per_group|first_|block|inode|reserved|overhead|free|group|flex|extra_isize|raid|stride/],
];
const SECTION_ORDER = ['identity', 'geometry', 'features', 'errors', 'journal', 'other'];
const LABEL = {
  identity: 'Identity', geometry: 'Geometry', features: 'Features', errors: 'State and errors', journal: 'Journal', other: 'Other',
};

function flatSuperblock(sb) {
  // Accept {key: value} or {fields: [...]} or [{name,value}].
  if (Array.isArray(sb)) return sb.map((f) => [f.name ?? f.key, f.value]);
  if (sb && Array.isArray(sb.fields)) return sb.fields.map((f) => [f.name ?? f.key, f.value]);
  return Object.entries(sb || {});
}

function humanKey(k) {
  const s = String(k).replace(/_/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

// Superblock times are Unix seconds; intervals are seconds.
const TIME_KEY = /(_time|_created|^filesystem_created|last_checked|next_check_after)$/;

function fmtSb(key, v) {
  if (typeof v === 'number' && TIME_KEY.test(key)) return v === 0 ? 'n/a' : when(v);
  if (typeof v === 'number' && key === 'check_interval') return v === 0 ? '0 (none)' : `${v} s (${Math.round(v / 86400)} days)`;
  if (typeof v === 'number' && key === 'filesystem_magic_number') return `0x${v.toString(16).toUpperCase()}`;
  if (typeof v === 'number' && key === 'lifetime_writes') return bytes(v * 1024);
  if (typeof v === 'number' && /_uuid$/.test(key)) return String(v);
  if (typeof v === 'number' && /(^|_)checksum(_seed)?$|journal_checksum$/.test(key)) return `0x${v.toString(16).padStart(8, '0')}`;
  if (typeof v === 'number' && key === 'journal_sequence') return `0x${v.toString(16).padStart(8, '0')}`;
  if (typeof v === 'number' && key === 'total_journal_size') return bytes(v);
  if (typeof v === 'number' && /_line$|_uid$|_gid$|inode$|_block$/.test(key)) return String(v);
  return fmtValue(v);
}

// Inode fields (debugfs stat): times in Unix seconds, mode in octal.
function fmtInode(key, v) {
  const k = String(key).toLowerCase();
  if (typeof v === 'number' && /^(a|c|m|d|cr)time$/.test(k)) return v === 0 ? '0' : `${v} (${when(v)})`;
  if (typeof v === 'number' && k === 'mode') return `0${v.toString(8)}`;
  if (typeof v === 'number' && /checksum|flags/.test(k)) return `0x${v.toString(16)}`;
  if (typeof v === 'number' && /^(size|size_high)$/.test(k)) return `${v} (${bytes(v)})`;
  if (typeof v === 'number' && /^(uid|gid|links|generation|inode|ino)$|extra|version/.test(k)) return String(v);
  return fmtValue(v);
}

function fmtValue(v) {
  if (v === null || v === undefined) return '—';
  if (Array.isArray(v)) return v.join(' ');
  if (typeof v === 'object') return JSON.stringify(v);
  if (typeof v === 'number') return num(v);
  return String(v);
}

function superblockSections(sb) {
  const buckets = new Map(SECTION_ORDER.map((s) => [s, []]));
  for (const [k, v] of flatSuperblock(sb)) {
    const key = String(k).toLowerCase();
    const sec = SECTIONS.find(([, , re]) => re.test(key));
    buckets.get(sec ? sec[0] : 'other').push([k, v]);
  }
  return h('div.sb-sections', { id: 'superblock' }, SECTION_ORDER.filter((s) => buckets.get(s).length).map((s) => {
    const rows = buckets.get(s).map(([k, v]) => {
      const key = String(k).toLowerCase();
      const bad = (s === 'errors' && /error/.test(key) && v && v !== '0' && v !== 0 && !/behavior|behaviour/.test(key)) || (key.includes('state') && /not clean|error/i.test(String(v)));
      const list = Array.isArray(v) ? v.map(String) : /features|flags|mount_options/.test(key) && typeof v === 'string' ? v.split(/\s+/).filter(Boolean) : null;
      const val = list ? h('td', list.length ? list.map((x) => h('span.tag', x)) : '—') : h('td', { style: bad ? { color: 'var(--err)', fontWeight: 600 } : null }, fmtSb(key, v));
      return h('tr', { dataset: { key: k } }, h('th', { scope: 'row' }, humanKey(k)), val);
    });
    return h('section', { dataset: { section: s } }, h('h3', LABEL[s]), h('table.kv', h('tbody', rows)));
  }));
}

function groupOfBlock(block, sbMap) {
  const first = Number(sbMap.get('first_block') ?? 0);
  const bpg = Number(sbMap.get('blocks_per_group'));
  return bpg > 0 ? Math.floor((Number(block) - first) / bpg) : null;
}

function groupOfInode(ino, sbMap) {
  const ipg = Number(sbMap.get('inodes_per_group'));
  return ipg > 0 ? Math.floor((Number(ino) - 1) / ipg) : null;
}

function flatList(x, key) {
  if (Array.isArray(x)) return x;
  if (x && Array.isArray(x[key])) return x[key];
  return [];
}

export async function imagePage({ main, query }, id) {
  let alive = true;
  let poll = null;
  const cleanups = [];
  const q = query;

  const head = h('div.image-head', { style: { minHeight: '64px' } }, skeleton(2));
  const sbBox = h('div.card', { id: 'sb-card' }, h('h2', 'Superblock'), skeleton(8));
  const mapBox = h('div.card', { id: 'groups-card', style: { minHeight: '360px' } }, h('h2', 'Block groups'), skeleton(6, '36px'));
  const browseBox = h('div.card', { id: 'browse-card', style: { minHeight: '200px' } }, h('h2', 'Directories and inodes'), skeleton(5));
  const triageBox = h('div.card', { id: 'triage-card', style: { minHeight: '330px' } }, h('h2', 'Triage'), skeleton(6));
  const findBox = h('div.card.findings-box', { id: 'findings-card' }, h('h2', 'Findings'), skeleton(5));

  mount(main, h('div.stack',
    h('div', h('a', { href: '#/images' }, '‹ Images')),
    head,
    h('div.image-grid',
      h('div.stack', mapBox, sbBox, browseBox),
      h('div.stack', findBox, triageBox))));

  let im = await api.image(id);
  renderHead(im);
  renderTriage(im);

  function renderHead(i) {
    const fn = img.lastErrorFunction(i);
    mount(head,
      h('div',
        h('h1', { id: 'image-title' }, h('span.mono', img.ticket(i) || '(no ticket)'), ' ', statusPill(img.status(i))),
        h('div.meta', h('b', img.label(i) || '(no label)'), ' · ', h('span.mono', img.uuid(i) || 'no UUID'), ' · ', bytes(img.fsSize(i) ?? img.size(i)), ' filesystem',
          ' · image ', bytes(img.imageSize(i)), ' · uploaded ', h('span', { title: when(img.created(i)) }, age(img.created(i))), ' · ', h('span.mono', { title: `image id ${img.id(i)}` }, `#${String(img.id(i)).slice(0, 8)}`)),
        fn ? h('div.meta', 'Kernel last error: ', h('a.mono', { href: link('images', { error_function: fn }), title: 'Other images with this error' }, `${fn}${img.lastErrorLine(i) ? ':' + img.lastErrorLine(i) : ''}`)) : null,
        img.status(i) === 'failed' ? h('div.error-msg', { role: 'alert' }, `Analysis failed: ${img.reason(i) || 'no reason recorded'}`) : null),
      h('div.actions',
        h('a.btn', { href: api.downloadUrl(i.id, 'qcow2'), download: `${img.ticket(i) || 'image'}-${i.id}.qcow2`, id: 'dl-qcow2' }, '⤓ QCOW2'),
        h('a.btn', { href: api.downloadUrl(i.id, 'raw'), download: `${img.ticket(i) || 'image'}-${i.id}.raw`, id: 'dl-raw', title: 'Sparse raw view converted on the fly; as large as the filesystem' }, '⤓ raw')));
  }

  function renderTriage(i) {
    const status = h('select', { id: 'triage-status', name: 'status' });
    const cur = img.triage(i) || 'new';
    for (const s of (TRIAGE.includes(cur) ? TRIAGE : [cur, ...TRIAGE])) status.append(h('option', { value: s, selected: s === cur }, s));
    const assignee = h('input', { type: 'text', id: 'triage-assignee', name: 'assignee', value: img.assignee(i) || '', autocomplete: 'off' });
    const tags = h('input', { type: 'text', id: 'triage-tags', name: 'tags', value: img.tags(i).join(', '), placeholder: 'comma separated', autocomplete: 'off' });
    const notes = h('textarea', { id: 'triage-notes', name: 'notes' }, img.notes(i));
    const saved = h('div.saved', { id: 'triage-saved', 'aria-live': 'polite' }, '');
    const btn = h('button.primary', { type: 'submit', id: 'triage-save' }, 'Save');
    const form = h('form.triage', { id: 'triage-form', onsubmit: async (ev) => {
      ev.preventDefault();
      btn.disabled = true;
      saved.textContent = 'Saving…';
      try {
        const body = {
          status: status.value,
          assignee: assignee.value.trim(),
          tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
          notes: notes.value,
        };
        const res = await api.patchImage(i.id, body);
        if (res && typeof res === 'object' && res.id !== undefined) im = res;
        saved.textContent = `Saved ${new Date().toLocaleTimeString()}.`;
        saved.dataset.saved = 'true';
      } catch (e) {
        saved.textContent = `Not saved: ${e.message}`;
        toast(`Triage not saved: ${e.message}`, 'error');
      } finally {
        btn.disabled = false;
      }
    } },
    h('label.field', { for: 'triage-status' }, 'Triage status', status),
    h('label.field', { for: 'triage-assignee' }, 'Assignee', assignee),
    h('label.field', { for: 'triage-tags' }, 'Tags', tags),
    h('label.field', { for: 'triage-notes' }, 'Notes', notes),
    h('div.row', btn, saved));
    mount(triageBox, h('h2', 'Triage'), form);
  }

  // Ingest still running: show where it is and poll until it settles.
  if (ACTIVE.includes(img.status(im))) {
    for (const b of [sbBox, mapBox, browseBox, findBox]) b.querySelector('.skeleton')?.setAttribute('aria-label', `Waiting for analysis (${img.status(im)})`);
    const tick = async () => {
      if (!alive) return;
      try { im = await api.image(id); } catch { /* keep polling */ }
      if (!alive) return;
      if (ACTIVE.includes(img.status(im))) { renderHead(im); poll = setTimeout(tick, 1500); }
      else { window.dispatchEvent(new HashChangeEvent('hashchange')); }
    };
    poll = setTimeout(tick, 1500);
    return () => { alive = false; clearTimeout(poll); };
  }
  if (img.status(im) !== 'ready') {
    for (const b of [sbBox, mapBox, browseBox, findBox]) mount(b, h('h2', b.querySelector('h2')?.textContent || ''), h('p.muted', 'No analysis: the image is not ready.'));
    return () => { alive = false; };
  }

  // Superblock and findings first: the map needs geometry, findings mark groups.
  const [sb, fnd] = await Promise.all([
    api.superblock(id).catch((e) => ({ __error: e })),
    api.findings(id).catch((e) => ({ __error: e })),
  ]);
  if (!alive) return () => {};
  const sbMap = new Map(flatSuperblock(sb.__error ? {} : sb).map(([k, v]) => [String(k).toLowerCase(), v]));
  if (sb.__error) mount(sbBox, h('h2', 'Superblock'), h('p.error-msg', sb.__error.message));
  else mount(sbBox, h('h2', 'Superblock'), superblockSections(sb));

  const findingsList = fnd.__error ? [] : flatList(fnd, 'findings');
  let map = null;
  let gotoGroup = () => {};
  const byGroup = new Map();
  for (const f of findingsList) {
    let g = f.group ?? (f.block !== undefined ? groupOfBlock(f.block, sbMap) : f.inode !== undefined ? groupOfInode(f.inode, sbMap) : null);
    if (g === null || g === undefined || !Number.isFinite(g)) continue;
    f.__group = g;
    if (!byGroup.has(g)) byGroup.set(g, []);
    byGroup.get(g).push(f);
  }

  // ---- findings
  const SEV = ['error', 'warning', 'info'];
  if (fnd.__error) mount(findBox, h('h2', 'Findings'), h('p.error-msg', fnd.__error.message));
  else {
    const byCode = new Map();
    for (const f of findingsList) {
      const k = `${f.severity}|${f.code}`;
      if (!byCode.has(k)) byCode.set(k, []);
      byCode.get(k).push(f);
    }
    const groupsSorted = [...byCode.entries()].sort((a, b) => SEV.indexOf(a[1][0].severity) - SEV.indexOf(b[1][0].severity) || b[1].length - a[1].length);
    const counts = Object.fromEntries(SEV.map((s) => [s, findingsList.filter((f) => f.severity === s).length]));
    mount(findBox,
      h('h2', 'Findings ', ...SEV.map((s) => [h('span.count', { class: counts[s] ? s : 'zero', title: `${counts[s]} ${s}` }, counts[s]), ' '])),
      findingsList.length === 0 ? h('p.muted', 'No problem found in the metadata.') : null,
      h('div', { id: 'findings' }, groupsSorted.map(([k, list], idx) => h('details.finding-group', { open: idx < 4 || null, dataset: { code: list[0].code } },
        h('summary', h('span.sev', { class: list[0].severity }, list[0].severity), h('code', list[0].code), h('span.spacer'), h('span.count', { class: list[0].severity }, list.length)),
        h('ul', list.slice(0, 500).map((f) => h('li.finding', { dataset: { group: f.__group ?? '', inode: f.inode ?? '', block: f.block ?? '' } },
          h('span.msg', f.message),
          f.__group !== undefined ? h('a.loc', { href: '#', class: 'to-group', onclick: (e) => { e.preventDefault(); gotoGroup(f.__group, { focusMap: true }); } }, `group ${num(f.__group)}`) : null,
          f.inode !== undefined ? h('a.loc', { href: '#', class: 'to-inode', onclick: (e) => { e.preventDefault(); showInode(f.inode, true); } }, `inode ${num(f.inode)}`) : null,
          f.block !== undefined ? h('span.loc', `block ${num(f.block)}`) : null)),
        list.length > 500 ? h('li.muted', `… and ${list.length - 500} more`) : null)))));
  }

  // Group count: from /groups' total, else from the superblock.
  const bpg = Number(sbMap.get('blocks_per_group')) || 0;
  const ipg = Number(sbMap.get('inodes_per_group')) || 0;
  const first = await api.groups(id, 0, 2048).catch((e) => ({ __error: e }));
  if (!alive) return () => {};
  const firstList = flatList(first, 'groups');
  let count = Number(first.total ?? img.groupCount(im));
  if (!Number.isFinite(count) || count <= 0) {
    const blocks = Number(sbMap.get('block_count'));
    const fb = Number(sbMap.get('first_block') ?? 0);
    count = bpg > 0 && blocks > 0 ? Math.ceil((blocks - fb) / bpg) : firstList.length;
  }

  // ---- group map + table
  const tableBody = h('tbody');
  const tablePager = h('div.pager');
  let tablePage = 0;
  let lastSelected = -1;
  gotoGroup = (g, { focusMap = false } = {}) => {
    if (!map || g < 0 || g >= count) return;
    map.select(g, { focus: focusMap, notify: false });
    lastSelected = g;
    tablePage = Math.floor(g / GROUP_PAGE);
    renderTable();
    setQuery({ group: g });
  };
  const renderTable = () => {
    const from = tablePage * GROUP_PAGE, to = Math.min(count, from + GROUP_PAGE);
    const rows = [];
    for (let i = from; i < to; i++) {
      const g = map.group(i);
      const fl = g ? flagList(g) : [];
      const cs = g ? checksumState(g) : 0;
      const nf = byGroup.get(i)?.length || 0;
      rows.push(h('tr', { id: `group-row-${i}`, class: i === lastSelected ? 'sel' : null, dataset: { group: i } },
        h('td.num', h('button.ghost', { type: 'button', style: { minHeight: '0', padding: '0 4px' }, onclick: () => gotoGroup(i, { focusMap: true }), title: 'Show on the map' }, num(i))),
        g ? [
          h('td.num.mono', `${num(g.first_block)}–${num(g.last_block)}`),
          h('td.num', num(g.free_blocks)), h('td.num', num(g.free_inodes)), h('td.num', num(g.directories)), h('td.num', num(g.unused_inodes)),
          h('td.mono', `${num(g.block_bitmap)} / ${num(g.inode_bitmap)} / ${num(g.inode_table)}${g.inode_table_last ? '–' + num(g.inode_table_last) : ''}`),
          h('td', fl.map((f) => h('span.tag', f))),
          h('td', cs === 2 ? h('span.sev.error', { title: checksumFailures(g).join(', ') }, 'bad') : cs === 1 ? h('span.muted', 'ok') : h('span.muted', '—')),
          h('td', nf ? h('span.count.error', nf) : ''),
        ] : h('td', { colspan: 9 }, skeleton(1, '14px'))));
    }
    mount(tableBody, rows);
    const pages = Math.max(1, Math.ceil(count / GROUP_PAGE));
    const jump = h('input', { type: 'text', inputmode: 'numeric', id: 'group-jump', placeholder: 'group #', style: { width: '90px' },
      onkeydown: (e) => { if (e.key === 'Enter') { const g = Number(jump.value); if (Number.isInteger(g)) gotoGroup(g, { focusMap: true }); } } });
    mount(tablePager,
      h('label.row', { style: { gap: '6px' } }, 'Go to', jump),
      h('span.muted', `groups ${num(from)}–${num(Math.max(from, to - 1))} of ${num(count)} · page ${tablePage + 1}/${pages}`),
      h('button', { type: 'button', id: 'groups-prev', disabled: tablePage === 0, onclick: () => { tablePage--; renderTable(); } }, '‹ Previous'),
      h('button', { type: 'button', id: 'groups-next', disabled: tablePage >= pages - 1, onclick: () => { tablePage++; renderTable(); } }, 'Next ›'));
  };

  if (first.__error) {
    mount(mapBox, h('h2', 'Block groups'), h('p.error-msg', first.__error.message));
  } else {
    map = groupMap({ count, blocksPerGroup: bpg, inodesPerGroup: ipg, findingsByGroup: byGroup,
      onSelect: (g) => { lastSelected = g; tablePage = Math.floor(g / GROUP_PAGE); renderTable(); setQuery({ group: g }); },
      onActivate: (g) => { gotoGroup(g); document.getElementById(`group-row-${g}`)?.scrollIntoView({ block: 'center' }); } });
    mount(mapBox, h('h2', `Block groups `, h('span.muted', { style: { fontWeight: 400 } }, `(${num(count)})`)), map.el,
      h('div.table-wrap', { style: { marginTop: '12px', maxHeight: '520px', overflowY: 'auto' } }, h('table', { id: 'groups-table' },
        h('thead', h('tr', ['Group', 'Blocks', 'Free blocks', 'Free inodes', 'Dirs', 'Unused inodes', 'Bitmaps / inode table', 'Flags', 'Csum', 'Findings'].map((t) => h('th', t)))),
        tableBody)),
      tablePager);
    map.init();
    map.setGroups(0, firstList);
    renderTable();
    // The rest of the groups, a few pages at a time, drawn as they come.
    (async () => {
      const PAGE = 4096;
      const offsets = [];
      for (let o = firstList.length; o < count; o += PAGE) offsets.push(o);
      let next = 0;
      const worker = async () => {
        while (alive && next < offsets.length) {
          const o = offsets[next++];
          try {
            const r = await api.groups(id, o, PAGE);
            if (!alive) return;
            const list = flatList(r, 'groups');
            map.setGroups(o, list);
            if (tablePage * GROUP_PAGE < o + list.length && (tablePage + 1) * GROUP_PAGE > o) renderTable();
          } catch (e) { toast(`Groups ${o}+: ${e.message}`, 'error'); }
        }
      };
      await Promise.all([worker(), worker(), worker()]);
      if (alive) main.dataset.groupsLoaded = 'true';
    })();
    const g0 = Number(q.get('group'));
    if (q.has('group') && Number.isInteger(g0)) gotoGroup(g0);
  }

  // ---- directory browser + inode view
  const crumbs = h('nav.crumbs', { 'aria-label': 'Directory path' });
  const dirBody = h('tbody');
  const inodeBox = h('div', { id: 'inode-view' }, h('p.muted', 'Select an entry to see its inode.'));
  let path = [{ name: '/', ino: 2 }];
  mount(browseBox, h('h2', 'Directories and inodes'), h('p.muted', { style: { marginTop: 0, fontSize: '12.5px' } }, 'Agent exports scramble names; inode numbers, types and structure are real.'),
    h('div.browse',
      h('div', crumbs, h('div.table-wrap', { style: { maxHeight: '460px', overflowY: 'auto' } }, h('table.dir-table', { id: 'dir-table' }, h('thead', h('tr', h('th', 'Name'), h('th.num', 'Inode'), h('th', 'Type'))), dirBody))),
      h('div', h('h3', 'Inode'), inodeBox)));

  async function openDir(ino, name, { push = true } = {}) {
    if (push) path.push({ name, ino });
    mount(crumbs, path.map((p, k) => [k ? h('span.muted', '/') : null,
      h('button', { type: 'button', onclick: () => { path = path.slice(0, k + 1); openDir(p.ino, p.name, { push: false }); } }, k ? p.name : '/ (2)')]));
    mount(dirBody, h('tr', h('td', { colspan: 3 }, skeleton(3))));
    try {
      const d = await api.dir(id, ino);
      if (!alive) return;
      const entries = flatList(d, 'entries');
      dirBody.dataset.ino = ino;
      mount(dirBody, entries.length ? entries.map((e) => {
        const type = String(e.type ?? e.file_type ?? '');
        const isDir = /^dir|directory|^2$/i.test(type);
        const nm = e.name ?? '';
        const nav = isDir && nm !== '.' && nm !== '..';
        return h('tr', { dataset: { ino: e.inode, type, name: nm } },
          h('td.name', nav ? h('button', { type: 'button', class: 'dir-link', onclick: () => { openDir(e.inode, nm); showInode(e.inode); } }, `${nm}/`)
            : h('button', { type: 'button', class: 'ent-link', style: { color: 'var(--fg)' }, onclick: () => showInode(e.inode) }, nm)),
          h('td.num.mono', h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); showInode(e.inode); } }, e.inode)),
          h('td', type));
      }) : h('tr', h('td.muted', { colspan: 3 }, 'empty directory')));
    } catch (e) {
      mount(dirBody, h('tr', h('td.error-msg', { colspan: 3 }, e.message)));
    }
  }

  async function showInode(ino, scroll) {
    mount(inodeBox, skeleton(6));
    if (scroll) browseBox.scrollIntoView({ block: 'start' });
    try {
      const d = await api.inode(id, ino);
      if (!alive) return;
      inodeBox.dataset.ino = ino;
      const g = groupOfInode(ino, sbMap);
      const body = typeof d === 'string' ? h('pre.inode', d)
        : h('table.kv', h('tbody', Object.entries(d).map(([k, v]) => h('tr', h('th', humanKey(k)), h('td', typeof v === 'object' && v !== null ? h('pre.inode', JSON.stringify(v, null, 1)) : fmtInode(k, v))))));
      mount(inodeBox, h('div.row', { style: { marginBottom: '6px' } }, h('b', `Inode ${num(ino)}`),
        g !== null && map ? h('a', { href: '#', onclick: (e) => { e.preventDefault(); gotoGroup(g, { focusMap: true }); } }, `in group ${num(g)}`) : null), body);
    } catch (e) {
      mount(inodeBox, h('p.error-msg', e.message));
    }
  }

  function setQuery(extra) {
    const { path: p, query: cur } = route();
    for (const [k, v] of Object.entries(extra)) cur.set(k, v);
    history.replaceState(null, '', `#/${p.map(encodeURIComponent).join('/')}?${cur}`);
  }

  openDir(2, '/', { push: false });
  if (q.get('inode')) showInode(Number(q.get('inode')));
  main.dataset.ready = 'true';

  return () => { alive = false; clearTimeout(poll); cleanups.forEach((f) => f()); delete main.dataset.ready; delete main.dataset.groupsLoaded; };
}
