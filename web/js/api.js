// The dashboard's only way to the server: its REST API v1, with the session
// cookie (HttpOnly, set by POST /api/v1/session) and the CSRF header that
// cookie-authenticated state-changing requests must carry.

const BASE = '/api/v1';
let csrf = null;
let csrfHeader = 'X-CSRF-Token';

/** An API error with the HTTP status and the server's message. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function remember(session) {
  if (!session || typeof session !== 'object') return session;
  const t = session.csrf_token ?? session.csrf ?? null;
  if (t) csrf = t;
  if (session.csrf_header) csrfHeader = session.csrf_header;
  return session;
}

/** Low-level request; JSON in and out unless `raw`. */
export async function request(method, path, { body, query, headers = {}, raw = false, signal } = {}) {
  let url = path.startsWith('/') ? path : `${BASE}/${path}`;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    if (s) url += (url.includes('?') ? '&' : '?') + s;
  }
  const h = { Accept: 'application/json', ...headers };
  if (method !== 'GET' && method !== 'HEAD' && csrf) h[csrfHeader] = csrf;
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && !(body instanceof ArrayBuffer) && !ArrayBuffer.isView(body)) {
    h['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const res = await fetch(url, { method, headers: h, body: payload, credentials: 'same-origin', signal });
  if (raw) return res;
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!res.ok) {
    const msg = (data && typeof data === 'object' && (data.error?.message || data.message || (typeof data.error === 'string' && data.error))) || (typeof data === 'string' && data) || res.statusText;
    if (res.status === 401 && !path.includes('session')) window.dispatchEvent(new CustomEvent('signedout'));
    throw new ApiError(res.status, String(msg), data);
  }
  return data;
}

export const get = (p, query, opts) => request('GET', p, { query, ...opts });

/** Who is signed in, or null. */
export async function whoami() {
  try {
    return remember(await get('session'));
  } catch (e) {
    if (e.status === 401 || e.status === 404) return null;
    throw e;
  }
}

/** Exchanges a maintainer/admin token for the session cookie. */
export async function signIn(token) {
  return remember(await request('POST', 'session', { body: { token } }));
}

/** Ends the session. */
export async function signOut() {
  try { await request('DELETE', 'session'); } finally { csrf = null; }
}

export const listImages = (query, opts) => get('images', query, opts);
export const image = (id) => get(`images/${encodeURIComponent(id)}`);
export const superblock = (id) => get(`images/${encodeURIComponent(id)}/superblock`);
/** A slice of the groups; `total` from the X-Total-Count header. */
export async function groups(id, offset, limit, opts = {}) {
  const res = await request('GET', `images/${encodeURIComponent(id)}/groups`, { query: { offset, limit }, raw: true, ...opts });
  const text = await res.text();
  let data = null;
  try { data = JSON.parse(text); } catch { data = text; }
  if (!res.ok) throw new ApiError(res.status, (data && (data.error?.message || data.message)) || res.statusText, data);
  const list = Array.isArray(data) ? data : (data && data.groups) || [];
  const h = res.headers.get('X-Total-Count');
  return { groups: list, total: h !== null ? Number(h) : (data && data.total) };
}
export const findings = (id) => get(`images/${encodeURIComponent(id)}/findings`);
export const inode = (id, ino) => get(`images/${encodeURIComponent(id)}/inodes/${ino}`);
export const dir = (id, ino) => get(`images/${encodeURIComponent(id)}/dirs/${ino}`);
export const patchImage = (id, body) => request('PATCH', `images/${encodeURIComponent(id)}`, { body });
export const downloadUrl = (id, kind) => `${BASE}/images/${encodeURIComponent(id)}/${kind}`;
