// The browser terminal: xterm.js on a WebSocket to /api/pty. The identity is never sent from
// here: the server takes it from the session cookie (ws-ticket) and the ticket it consumes.
// Like a plain `ssh host`, opening the page resumes the user's most recently active detached
// session; `?session=ID` opens that one, `?new` starts a fresh one, and the header lists them all.
(function () {
  const status = document.getElementById('status');
  const nav = document.getElementById('sessions');
  // A little line height keeps underscores visible with common monospace fonts.
  const term = new Terminal({ cursorBlink: true, fontSize: 14, lineHeight: 1.15, fontFamily: 'DejaVu Sans Mono, Menlo, Consolas, monospace', scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById('terminal'));
  fit.fit();
  window.term = term; // for tests and debugging

  const validId = (s) => typeof s === 'string' && /^[a-z0-9]{1,16}$/.test(s);
  const post = (body) => fetch('/api/auth/ws-ticket', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });

  // The user's sessions, as `ssh host sessions` lists them (text only: nothing here is HTML).
  function render(list, current) {
    nav.replaceChildren();
    for (const s of list.filter((s) => validId(s.id))) {
      const a = document.createElement('a');
      a.href = `/?session=${s.id}`;
      a.textContent = s.id;
      a.title = `${s.command} · ${s.state}, ${s.clients} attached, started ${new Date(s.started * 1000).toLocaleString()}`;
      a.className = s.id === current ? 'current' : s.state;
      nav.append(a);
    }
    const fresh = document.createElement('a');
    fresh.href = '/?new';
    fresh.textContent = '+ new';
    nav.append(fresh);
  }

  async function connect() {
    const params = new URLSearchParams(location.search);
    const listed = await fetch('/api/sessions');
    if (listed.status === 401) { location.href = '/'; return; }
    const list = listed.ok ? await listed.json() : [];
    let session = params.get('session');
    if (!validId(session)) session = null;
    if (!session && !params.has('new')) {
      const detached = list.find((s) => s.state === 'detached' && validId(s.id));
      if (detached) session = detached.id;
    }
    render(list, session);
    // The ticket is bound to the session: it opens that one or nothing.
    const r = await post(session ? { session } : {});
    if (r.status === 404) { status.textContent = `session ${session} is not running; pick another or start a new one`; return; }
    if (!r.ok) { status.textContent = 'not signed in'; location.href = '/'; return; }
    const { ticket } = await r.json();
    // A reload comes back to the same session rather than starting another.
    if (session) history.replaceState(null, '', `/?session=${session}`);
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}/api/pty?ticket=${encodeURIComponent(ticket)}&cols=${term.cols}&rows=${term.rows}`);
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
