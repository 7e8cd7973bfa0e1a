// The demo upstream for `scripts/dev`: answers every request with what it received
// (method, path, query and headers) as JSON, so you can see what Intercom forwards;
// and, under /app, a small single-page app that logs in through Intercom (its
// backend-for-frontend), calls an API with its session and logs out.
import http from 'node:http';

const port = Number(process.env.PORT || 9402);

// The demo SPA: static HTML and a few lines of script, no build step. It never sees
// a token: the session cookie is HttpOnly, and /auth/user shows claims only.
const page = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Intercom demo SPA</title>
<style>body{font:15px system-ui;margin:2em;max-width:50em}pre{background:#f4f4f4;padding:1em;overflow:auto}</style>
</head><body>
<h1>Intercom demo SPA</h1>
<p>You reached this page through Intercom with a browser session. The API call below
goes through Intercom too: the API receives Intercom's internal JWT, the browser holds
no token.</p>
<h2>You</h2><pre id="user">…</pre>
<p><button id="call">Call the API</button> <button id="logout">Log out</button></p>
<h2>What the API received</h2><pre id="api">(not called yet)</pre>
<script>
const show = (id, value) => { document.getElementById(id).textContent = JSON.stringify(value, null, 2); };
fetch('/auth/user').then((r) => r.json()).then((u) => show('user', u));
document.getElementById('call').onclick = async () => {
  const r = await fetch('/spa-api/hello?from=spa', { headers: { 'X-CSRF': '1' } });
  show('api', await r.json());
};
document.getElementById('logout').onclick = async () => {
  const r = await fetch('/auth/logout', { method: 'POST', headers: { 'X-CSRF': '1', Accept: 'application/json' } });
  window.location = (await r.json()).end_session_url;
};
</script>
</body></html>
`;

http
  .createServer((req, res) => {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://upstream');
      if (req.method === 'GET' && (url.pathname === '/app' || url.pathname.startsWith('/app/'))) {
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end(page);
        return;
      }
      if (req.method === 'GET' && url.pathname === '/logged-out') {
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end('<!doctype html><title>Logged out</title><p>You are logged out. <a href="/app/">Log in again</a></p>\n');
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        upstream: 'demo',
        method: req.method,
        path: url.pathname,
        query: url.search.slice(1),
        headers: req.headers,
        body_len: length,
      }, null, 2) + '\n');
    });
  })
  .listen(port, '127.0.0.1', () => console.log(`demo upstream on http://127.0.0.1:${port}`));
