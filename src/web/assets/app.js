// The browser terminal: xterm.js on a WebSocket to /api/pty. The identity is never sent from
// here: the server takes it from the session cookie (ws-ticket) and the ticket it consumes.
(function () {
  const status = document.getElementById('status');
  // A little line height keeps underscores visible with common monospace fonts.
  const term = new Terminal({ cursorBlink: true, fontSize: 14, lineHeight: 1.15, fontFamily: 'DejaVu Sans Mono, Menlo, Consolas, monospace', scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById('terminal'));
  fit.fit();
  window.term = term; // for tests and debugging

  async function connect() {
    const r = await fetch('/api/auth/ws-ticket', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    if (!r.ok) { status.textContent = 'not signed in'; location.href = '/'; return; }
    const { ticket } = await r.json();
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    // ?session=ID (from `ssh host link ID`, or a session list) opens that running session.
    const session = new URLSearchParams(location.search).get('session');
    const attach = session && /^[a-z0-9]{1,16}$/.test(session) ? `&session=${session}` : '';
    const ws = new WebSocket(`${proto}://${location.host}/api/pty?ticket=${encodeURIComponent(ticket)}&cols=${term.cols}&rows=${term.rows}${attach}`);
    ws.binaryType = 'arraybuffer';
    const enc = new TextEncoder();
    ws.onopen = () => { status.textContent = ''; term.focus(); };
    ws.onmessage = (e) => term.write(typeof e.data === 'string' ? e.data : new Uint8Array(e.data));
    ws.onclose = (e) => { status.textContent = 'session ended'; term.write(`\r\n\x1b[2m[session ended${e.reason ? ': ' + e.reason : ''}]\x1b[0m\r\n`); };
    term.onData((d) => { if (ws.readyState === 1) ws.send(enc.encode(d)); });
    term.onResize(({ cols, rows }) => { if (ws.readyState === 1) ws.send(JSON.stringify({ type: 'resize', cols, rows })); });
  }
  window.addEventListener('resize', () => fit.fit());
  connect().catch((e) => { status.textContent = String(e); });
})();
