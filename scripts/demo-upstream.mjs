// The demo upstream for `scripts/dev`: answers every request with what it received
// (method, path, query and headers) as JSON, so you can see what Intercom forwards.
import http from 'node:http';

const port = Number(process.env.PORT || 9402);
http
  .createServer((req, res) => {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://upstream');
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
