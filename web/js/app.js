// Entry point: session check, hash router, header.
import { h, mount, route } from './util.js';
import * as api from './api.js';
import { listPage } from './list.js';
import { imagePage } from './image.js';
import { uploadPage } from './upload.js';

const main = document.getElementById('main');
let me = null;
let cleanup = null;

function showUser() {
  const signed = !!me;
  document.getElementById('nav').hidden = !signed;
  document.getElementById('who').hidden = !signed;
  if (signed) {
    const name = me.name || me.token_name || 'signed in';
    document.getElementById('who-name').textContent = `${name} · ${me.role || ''}`;
  }
}

function signInPage(next) {
  const err = h('div.error-msg', { id: 'signin-error', role: 'alert', hidden: true });
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', required: true, placeholder: 'paste a maintainer or admin token', 'aria-describedby': 'signin-error' });
  const btn = h('button.primary', { type: 'submit', id: 'signin-submit' }, 'Sign in');
  const form = h('form.card.stack', { id: 'signin-form', method: 'post', onsubmit: async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    btn.disabled = true;
    try {
      await api.signIn(input.value.trim());
      me = await api.whoami();
      if (!me) throw new Error('The server did not keep the session; are cookies allowed?');
      showUser();
      location.hash = next || '#/images';
      if (!next) render();
    } catch (e) {
      err.textContent = e.status === 401 ? 'This token is not valid (unknown, revoked or expired).'
        : e.status === 403 ? 'This token cannot sign in to the dashboard: only maintainer and admin tokens can.'
          : `Sign-in failed: ${e.message}`;
      err.hidden = false;
      input.select();
    } finally {
      btn.disabled = false;
    }
  } },
  h('h1', 'Sign in'),
  h('p', 'Use a maintainer or admin token (', h('code', 'support-server token create --role maintainer'), '). It is exchanged for a session cookie and not stored by the page.'),
  h('label.field', { for: 'token' }, 'Token', input),
  err,
  h('div.row', btn));
  mount(main, h('div.signin', form));
  input.focus();
}

async function render() {
  if (cleanup) { try { cleanup(); } catch { /* page already gone */ } cleanup = null; }
  const { path, query } = route();
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === (path[0] || 'images'));
  if (!me) { signInPage(location.hash && !location.hash.startsWith('#/signin') ? location.hash : null); return; }
  const ctx = { main, me, query, path };
  try {
    if (path[0] === 'images' && path[1]) cleanup = await imagePage(ctx, path[1]);
    else if (path[0] === 'upload') cleanup = await uploadPage(ctx);
    else cleanup = await listPage(ctx);
  } catch (e) {
    if (e.status === 401) return;
    mount(main, h('div.card', h('h1', e.status === 404 ? 'Not found' : 'Something went wrong'), h('p.muted', e.message), h('a', { href: '#/images' }, 'Back to the image list')));
  }
}

window.addEventListener('hashchange', () => {
  // Query-only changes inside a page are handled by the page itself.
  if (window.__softNav) { window.__softNav = false; return; }
  render();
});
window.addEventListener('signedout', () => { if (me) { me = null; showUser(); render(); } });
document.getElementById('signout').addEventListener('click', async () => {
  try { await api.signOut(); } catch { /* already gone */ }
  me = null;
  showUser();
  location.hash = '#/signin';
  render();
});

(async () => {
  try { me = await api.whoami(); } catch { me = null; }
  showUser();
  render();
})();
