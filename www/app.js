// roomchat browser client: plain JS, no build step, no framework.
// Speaks the native protocol of /PROTOCOL.md over one WebSocket.
// Rule kept throughout: user-supplied strings only ever reach the page
// through textContent / value / attributes, never through innerHTML.
'use strict';

(() => {
  const STORAGE_KEY = 'roomchat:last';
  const LIMITS = { username: 32, room: 64, text: 2000 };
  const TYPING_IDLE_MS = 2000; // send typing:false after this pause
  const TYPING_STALE_MS = 6000; // forget someone's typing flag if it is not renewed or cleared
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 8000;
  const CONNECT_TIMEOUT_MS = 10000;
  const GROUP_GAP_MS = 5 * 60 * 1000; // consecutive messages of one sender within this share a header

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $('conn'), connText: $('conn-text'), retry: $('retry'),
    banner: $('banner'), bannerText: $('banner-text'), bannerClose: $('banner-close'),
    joinView: $('join-view'), joinForm: $('join-form'), joinUsername: $('join-username'),
    joinRoom: $('join-room'), joinUsernameError: $('join-username-error'),
    joinRoomError: $('join-room-error'), joinButton: $('join-button'), joinStatus: $('join-status'),
    activeRooms: $('active-rooms'), activeRoomsList: $('active-rooms-list'), suggestions: $('room-suggestions'),
    chatView: $('chat-view'), roomName: $('room-name'), meName: $('me-name'), leave: $('leave-button'),
    joinIdentity: $('join-identity'), joinIntro: $('join-intro'), joinIdentityName: $('join-identity-name'), meVerified: $('me-verified'),
    people: $('people'), userCount: $('user-count'), userList: $('user-list'),
    switchBox: $('switch-box'), switchForm: $('switch-form'), switchRoom: $('switch-room'),
    switchRoomError: $('switch-room-error'),
    messages: $('messages'), jump: $('jump'), typing: $('typing'),
    composer: $('composer'), input: $('message-input'), send: $('send-button'), messageError: $('message-error'),
  };

  // ---- validation: mirrors the server's bounds (counted in Unicode scalar values)

  const EDGE_SPACE = /^\p{White_Space}+|\p{White_Space}+$/gu; // Rust's trim(): Unicode White_Space
  const ONLY_SPACE = /^\p{White_Space}*$/u;
  const CONTROL = /\p{Cc}/u;
  const CONTROL_IN_TEXT = /(?![\n\r\t])\p{Cc}/u;
  const charCount = (s) => [...s].length;
  const wellFormed = (s) => typeof s.isWellFormed !== 'function' || s.isWellFormed();

  /** Returns {value} (trimmed) or {error} for a username or room name. */
  function checkName(raw, what, max) {
    const value = raw.replace(EDGE_SPACE, '');
    if (value === '') return { error: `Enter a ${what}.` };
    const n = charCount(value);
    if (n > max) return { error: `The ${what} is ${n} characters long; at most ${max} are allowed.` };
    if (CONTROL.test(value) || !wellFormed(value)) return { error: `The ${what} contains characters that cannot be used (control characters).` };
    return { value };
  }

  /** Returns an error string, or null when the text can be sent as is. */
  function checkText(text) {
    const max = state.limits?.maxTextChars || LIMITS.text;
    if (text === '' || ONLY_SPACE.test(text)) return 'Write something first: a message cannot be empty or only spaces.';
    const n = charCount(text);
    if (n > max) return `The message is ${n} characters long; at most ${max} are allowed.`;
    if (CONTROL_IN_TEXT.test(text) || !wellFormed(text)) return 'The message contains control characters that cannot be sent.';
    return null;
  }

  // ---- state

  const state = {
    config: null,
    ws: null,
    myId: null, // from `connected`; tells own messages apart
    limits: null,
    everConnected: false,
    attempt: 0, // reconnect attempts since the last good connection
    reconnectTimer: null,
    retryAt: 0,
    closeReason: '',
    want: null, // {username, room}: where the user wants to be; rejoined after a reconnect
    joined: null, // {username, room}: confirmed by the server
    lastRoom: null, // room we were in when the connection dropped
    nextAck: 1,
    pending: new Map(), // ack -> {kind, ...}, in send order
    users: new Map(), // id -> username
    typers: new Map(), // id -> {username, timer}
    typingSent: false,
    typingTimer: null,
    seen: new Set(), // keys of messages shown in the current room
    lastMsg: null, // {id, ts} of the last message node, for grouping
    // Where the page stands in the current room: the room's epoch and the last
    // seq shown. A reconnect resumes from it (joinRoom since + epoch).
    position: null, // {room, epoch, seq}
    // Identity (v3). With a key on the server, the page proves who the user
    // is with the token from its URL fragment (#token=…: a fragment never
    // reaches a server or its logs) before it joins anything.
    token: tokenFromFragment(),
    authRequired: false,
    me: null, // {user, name}: who the token proved
    authed: false, // this connection is authenticated
    expiredToken: null, // a token the server said expired: never sent again
    stopped: null, // why the page stopped reconnecting (no token, a bad one)
  };

  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    const token = params.get('token');
    return token && token.length <= 8192 ? token : null;
  }

  // ---- small DOM helpers (text only)

  function h(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function hue(s) {
    let x = 0;
    for (const c of s) x = (x * 31 + c.codePointAt(0)) >>> 0;
    return x % 360;
  }

  function avatar(name, extra) {
    const a = h('span', 'avatar' + (extra ? ' ' + extra : ''), [...name][0]?.toUpperCase() || '?');
    a.style.setProperty('--hue', String(hue(name)));
    a.setAttribute('aria-hidden', 'true');
    return a;
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  function timeNode(ts) {
    const d = new Date(typeof ts === 'number' ? ts : Date.now());
    const t = h('time', 'time', timeFmt.format(d));
    t.dateTime = d.toISOString();
    t.title = fullFmt.format(d);
    return t;
  }

  // ---- storage

  function loadLast() {
    try { return JSON.parse(localStorage.getItem(STORAGE_KEY)) || {}; } catch { return {}; }
  }
  function saveLast(username, room) {
    try { localStorage.setItem(STORAGE_KEY, JSON.stringify({ username, room })); } catch { /* private mode */ }
  }

  // ---- connection status and banner

  function setConn(kind, text) {
    ui.conn.dataset.state = kind;
    ui.connText.textContent = text;
    ui.retry.hidden = kind !== 'offline';
    const online = kind === 'online';
    ui.send.disabled = !online;
    ui.composer.classList.toggle('offline', !online);
    ui.input.placeholder = online ? 'Write a message…' : 'Offline: you can keep typing, sending waits for the connection…';
    ui.userList.classList.toggle('stale', !online);
  }

  function showBanner(text, kind = 'error') {
    ui.bannerText.textContent = text;
    ui.banner.dataset.kind = kind;
    ui.banner.hidden = false;
  }
  function hideBanner() { ui.banner.hidden = true; }

  // ---- connection

  async function loadConfig() {
    try {
      const r = await fetch('/config.json', { cache: 'no-store' });
      if (r.ok) {
        const c = await r.json();
        if (c && Number.isInteger(c.wsPort) && typeof c.wsPath === 'string') state.config = c;
      }
    } catch { /* keep the last good config; the socket will tell if the server is gone */ }
    return state.config;
  }

  function wsUrl(cfg) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.hostname}:${cfg.wsPort}${cfg.wsPath}`;
  }

  async function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (state.ws) return;
    setConn('connecting', state.everConnected ? 'Reconnecting…' : 'Connecting…');
    const cfg = await loadConfig();
    if (!cfg) { scheduleReconnect("Can't reach the server"); return; }
    if (state.ws) return;
    let ws;
    try { ws = new WebSocket(wsUrl(cfg)); } catch { scheduleReconnect("Can't reach the server"); return; }
    state.ws = ws;
    let greeted = false;
    const deadline = setTimeout(() => { if (!greeted) ws.close(); }, CONNECT_TIMEOUT_MS);
    ws.onmessage = (ev) => {
      if (state.ws !== ws) return;
      if (!greeted) { greeted = true; clearTimeout(deadline); }
      handleFrame(ev.data);
    };
    ws.onerror = () => { /* onclose follows and reports */ };
    ws.onclose = (ev) => {
      clearTimeout(deadline);
      if (state.ws !== ws) return;
      onClosed(ev, greeted);
    };
  }

  function closeReason(code, greeted) {
    if (!greeted) return "Can't reach the server";
    switch (code) {
      case 4001: return 'Your sign-in expired';
      case 1001: return 'The server went away (restarting?)';
      case 1009: return 'The server closed the connection: a message was too large';
      case 1013: return 'The server dropped this connection because it fell behind';
      case 1002: case 1003: case 1007: case 1008: return `The server closed the connection (protocol error ${code})`;
      case 1000: return 'The connection was closed';
      default: return 'Connection lost';
    }
  }

  function onClosed(ev, greeted) {
    state.ws = null;
    state.myId = null;
    state.authed = false;
    const wasJoined = !!state.joined;
    state.lastRoom = state.joined ? state.joined.room : state.lastRoom;
    state.joined = null;
    clearTypers();
    state.typingSent = false;
    clearTimeout(state.typingTimer);
    // Unanswered messages may or may not have arrived; give the text back rather than lose it.
    for (const p of state.pending.values()) {
      if (p.kind === 'message') {
        restoreText(p.text);
        ui.messageError.textContent = 'The connection dropped before the server confirmed your last message. It is back in the box: send it again if it does not show up.';
      }
    }
    state.pending.clear();
    if (ev.code === 1009) showBanner('The server refused a message that was too large and closed the connection. Reconnecting…');
    if (ev.code === 4001 && state.token === state.expiredToken) {
      // Reconnecting with the same token would only be refused again: stop,
      // and say what to do. A new token in the fragment starts over.
      stop('Your sign-in has expired. Open a new sign-in link (or sign in again in your application) to keep chatting.');
      if (wasJoined && !ui.chatView.hidden) addSystem('Your sign-in expired: you left the room.', 'warn');
      return;
    }
    if (state.stopped) { stop(state.stopped); return; }
    if (wasJoined && !ui.chatView.hidden) addSystem(`${closeReason(ev.code, greeted)}. Trying to reconnect…`, 'warn');
    scheduleReconnect(closeReason(ev.code, greeted));
  }

  /** Stops reconnecting: the server will not take this page as it is. */
  function stop(why) {
    state.stopped = why;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.retryAt = 0;
    showBanner(why);
    setConn('offline', 'Not signed in');
    ui.retry.hidden = true;
    ui.joinButton.disabled = true;
    ui.joinStatus.textContent = why;
    if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  }

  // A new token in the fragment (the application refreshed it): use it, on
  // this connection (a refresh) or on a new one.
  window.addEventListener('hashchange', () => {
    const token = tokenFromFragment();
    if (!token || token === state.token) return;
    state.token = token;
    if (state.authed) { send('authenticate', { token }, { kind: 'auth', refresh: true }); return; }
    if (state.stopped) {
      state.stopped = null;
      ui.joinButton.disabled = false;
      hideBanner();
      retryNow();
    }
  });

  function scheduleReconnect(reason) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    state.attempt += 1;
    state.retryAt = Date.now() + delay;
    state.closeReason = reason;
    renderCountdown();
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function renderCountdown() {
    if (!state.reconnectTimer && state.retryAt === 0) return;
    const s = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    setConn('offline', `${state.closeReason}. Reconnecting in ${s} s…`);
  }

  setInterval(() => { if (state.reconnectTimer) renderCountdown(); }, 1000);

  function retryNow() {
    if (state.ws) return;
    state.retryAt = 0;
    connect();
  }

  /** Sends one event with an ack number; returns false if there is no open connection. */
  function send(event, data, info) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !state.myId) return false;
    const ack = state.nextAck++;
    state.pending.set(ack, info || { kind: event });
    const frame = data === undefined ? { event, ack } : { event, data, ack };
    ws.send(JSON.stringify(frame));
    return true;
  }

  // ---- incoming frames

  function handleFrame(raw) {
    let f;
    try { f = JSON.parse(raw); } catch { return; }
    if (!f || typeof f !== 'object' || typeof f.event !== 'string') return;
    const d = f.data && typeof f.data === 'object' ? f.data : {};
    switch (f.event) {
      case 'connected': return onConnected(d);
      case 'joined': return onJoined(d);
      case 'userJoined': return onUserJoined(d);
      case 'userLeft': return onUserLeft(d);
      case 'chatMessage': return onChatMessage(d);
      case 'typing': return onTyping(d);
      case 'left': return onLeft(d);
      case 'error': return onServerError(d, f.ack);
      case 'ack': return onAck(d, f.ack);
      default: return undefined; // newer server, unknown event: ignore
    }
  }

  function onAck(d, ack) {
    const req = state.pending.get(ack);
    state.pending.delete(ack);
    if (req?.kind === 'auth') onAuthenticated(d, req);
  }

  function onConnected(d) {
    state.myId = String(d.id);
    state.limits = d.limits && typeof d.limits === 'object' ? d.limits : null;
    state.everConnected = true;
    state.attempt = 0;
    state.retryAt = 0;
    state.authRequired = d.auth === 'required';
    renderIdentity();
    if (state.authRequired) {
      if (!state.token) {
        stop('This chat server needs you to sign in: open it with the link your application gives you (it ends in #token=…).');
        return;
      }
      setConn('connecting', 'Signing in…');
      send('authenticate', { token: state.token }, { kind: 'auth' });
      return;
    }
    setConn('online', 'Connected');
    resumeWanted();
  }

  /** Joins where the user wants to be, once the connection may. */
  function resumeWanted() {
    if (state.want) {
      const mode = state.lastRoom && state.lastRoom === state.want.room ? 'rejoin' : 'join';
      sendJoin(state.want.username, state.want.room, mode);
    }
  }

  function onAuthenticated(d, req) {
    state.authed = true;
    state.me = { user: String(d.user), name: String(d.name) };
    renderIdentity();
    if (req.refresh) return;
    setConn('online', 'Connected');
    hideBanner();
    if (state.want) state.want.username = state.me.name;
    resumeWanted();
    refreshRooms();
  }

  /** In identity mode: no name field, the verified name instead. */
  function renderIdentity() {
    const verified = state.authRequired;
    ui.joinUsername.closest('.field').hidden = verified;
    ui.joinIdentity.hidden = !(verified && state.me);
    ui.joinIntro.textContent = verified
      ? 'Pick a room. Everyone sees the name your sign-in gives you.'
      : 'Pick a name and a room. Anyone in the same room sees your messages.';
    ui.joinIdentityName.textContent = state.me ? state.me.name : '…';
    ui.joinIdentity.title = state.me ? `Verified user ${state.me.user}` : '';
    ui.meVerified.hidden = !(verified && state.me);
  }

  function sendJoin(username, room, mode) {
    // With a verified identity the name is the token's: none is sent.
    const data = state.authRequired ? { room } : { username, room };
    const pos = state.position;
    if (mode === 'rejoin' && pos && pos.room === room) {
      // Back in the room we dropped out of: ask for what came after the last
      // message shown, and learn from `resumed` whether that is all of it.
      data.since = pos.seq;
      data.epoch = pos.epoch;
    }
    const ok = send('joinRoom', data, { kind: 'join', mode, username, room });
    if (!ok) return false;
    if (mode === 'join') ui.joinStatus.textContent = `Joining ${room}…`;
    if (mode === 'rejoin') setConn('connecting', `Connected, rejoining ${room}…`);
    return true;
  }

  /** The first join still waiting for its `joined` (frames are answered in order). */
  function takeJoinRequest() {
    for (const p of state.pending.values()) {
      if (p.kind === 'join' && !p.answered) { p.answered = true; return p; }
    }
    return { mode: 'join' };
  }

  function onJoined(d) {
    const req = takeJoinRequest();
    const room = String(d.room);
    const username = String(d.username);
    const rejoin = req.mode === 'rejoin' && room === state.lastRoom && ui.messages.childElementCount > 0;
    const switched = !!state.joined && state.joined.room !== room;
    state.joined = { username, room };
    state.want = { username, room };
    state.lastRoom = null;
    saveLast(username, room);
    state.users = new Map();
    for (const u of Array.isArray(d.users) ? d.users : []) state.users.set(String(u.id), String(u.username));
    clearTypers();
    const history = Array.isArray(d.history) ? d.history : [];
    const epoch = typeof d.epoch === 'string' ? d.epoch : null;
    const pos = state.position;
    state.position = null; // set below, once the history is shown
    const sameEpoch = !!pos && pos.room === room && pos.epoch === epoch;
    if (rejoin) {
      addSystem(`Reconnected: rejoined ${room} as ${username}.`, 'ok');
      if (d.resumed === false) {
        addSystem(sameEpoch
          ? 'Some messages may be missing: more were sent while you were away than the room keeps.'
          : 'Some messages may be missing: the room was emptied and started again while you were away.', 'missing');
      }
      for (const m of history) {
        // In the same epoch, a seq at or below the last one shown was shown already (or is missed for good).
        if (sameEpoch && typeof m.seq === 'number' && m.seq <= pos.seq) continue;
        if (!state.seen.has(msgKey(m))) addMessage(m);
      }
    } else {
      clearMessages();
      if (history.length) addSystem(history.length === 1 ? '1 earlier message' : `${history.length} earlier messages`, 'divider');
      for (const m of history) addMessage(m, true);
      addSystem(switched || req.mode === 'switch' ? `You switched to ${room}.` : `You joined ${room} as ${username}.`, 'ok');
    }
    // The last seq shown: the history's last; after a resume that missed
    // nothing, where we were; else 0 (an empty room, or --history 0: a later
    // resume from 0 then says `resumed: false` rather than hide a gap).
    const lastSeq = history.length ? Number(history[history.length - 1].seq) || 0
      : d.resumed === true && sameEpoch ? pos.seq : 0;
    state.position = epoch === null ? null : { room, epoch, seq: lastSeq };
    setConn('online', 'Connected');
    ui.roomName.textContent = room;
    ui.meName.textContent = username;
    document.title = `${room} · roomchat`;
    ui.joinStatus.textContent = '';
    ui.switchRoomError.textContent = '';
    renderUsers();
    renderTyping();
    showChat(!rejoin);
    scrollToBottom();
  }

  function inRoom(d) { return state.joined && d.room === state.joined.room; }

  function onUserJoined(d) {
    if (!inRoom(d)) return;
    state.users.set(String(d.id), String(d.username));
    renderUsers();
    addSystem(`${d.username} joined.`);
  }

  function onUserLeft(d) {
    if (!inRoom(d)) return;
    state.users.delete(String(d.id));
    dropTyper(String(d.id));
    renderUsers();
    addSystem(`${d.username} left.`);
  }

  function onChatMessage(d) {
    if (!inRoom(d)) return;
    dropTyper(String(d.id));
    addMessage(d);
    if (state.position && typeof d.seq === 'number') state.position.seq = d.seq;
  }

  function onTyping(d) {
    if (!inRoom(d)) return;
    const id = String(d.id);
    if (id === state.myId) return;
    if (d.typing) {
      const old = state.typers.get(id);
      if (old) clearTimeout(old.timer);
      state.typers.set(id, { username: String(d.username), timer: setTimeout(() => dropTyper(id), TYPING_STALE_MS) });
      renderTyping();
    } else {
      dropTyper(id);
    }
  }

  function onLeft() {
    state.joined = null;
    state.users = new Map();
    clearTypers();
    if (!state.want && ui.joinView.hidden) showJoin();
  }

  const FIELD_NAMES = { username: 'name', room: 'room name', text: 'message', data: 'request' };

  function describeError(d) {
    const code = String(d.code || 'error');
    const msg = d.message ? String(d.message) : '';
    switch (code) {
      case 'forbidden': return d.field === 'room'
        ? 'Your sign-in does not let you into that room.'
        : `Not allowed${msg ? `: ${msg}` : '.'}`;
      case 'unauthenticated': return 'This chat server needs you to sign in first.';
      case 'token_expired': return 'Your sign-in has expired.';
      case 'invalid_token': return `Your sign-in link is not valid${msg ? ` (${msg})` : ''}.`;
      case 'rate_limited': return "You're sending too fast, so the server dropped that. Wait a moment and try again.";
      case 'invalid_field': return `The server did not accept the ${FIELD_NAMES[d.field] || d.field || 'input'}${msg ? `: ${msg}` : '.'}`;
      case 'not_in_room': return "You're not in a room any more. Join a room first.";
      case 'bad_json': case 'bad_request': case 'unknown_event':
        return `The server did not understand this client (${code})${msg ? `: ${msg}` : '.'}`;
      default: return `Server error (${code})${msg ? `: ${msg}` : '.'}`;
    }
  }

  function onServerError(d, ack) {
    const req = ack !== undefined ? state.pending.get(ack) : undefined;
    if (ack !== undefined) state.pending.delete(ack);
    const text = describeError(d);
    if (d.code === 'token_expired') state.expiredToken = state.token;
    if (req?.kind === 'auth' || (d.code === 'unauthenticated' && ack === undefined)) {
      // The token in the link was refused: trying again would not help.
      if (req?.refresh) { showBanner(text); return; }
      stop(`${text} Open a new sign-in link to keep chatting.`);
      return;
    }
    if (d.code === 'token_expired') { showBanner(`${text} Open a new sign-in link to keep chatting.`); return; }
    if (req?.kind === 'message') {
      restoreText(req.text);
      ui.messageError.textContent = d.code === 'rate_limited'
        ? "You're sending messages too fast: that one was not delivered. It is back in the box; wait a moment and send it again."
        : text;
      return;
    }
    if (req?.kind === 'join') {
      if (req.mode === 'switch') {
        ui.switchRoomError.textContent = text;
        ui.switchRoom.focus();
      } else if (req.mode === 'rejoin' || ui.chatView.hidden === false) {
        showBanner(`Could not rejoin ${req.room}: ${text}`);
        state.want = null;
        showJoin();
      } else {
        const target = d.field === 'username' ? ui.joinUsernameError : ui.joinRoomError;
        target.textContent = text;
        ui.joinStatus.textContent = '';
        (d.field === 'username' ? ui.joinUsername : ui.joinRoom).focus();
        state.want = null;
      }
      return;
    }
    showBanner(text);
  }

  // ---- rendering

  function msgKey(m) { return `${m.id}|${m.seq}|${m.ts}`; }

  function nearBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.jump.hidden = true;
  }

  /** Appends a node; follows the conversation only if the reader was already at the bottom. */
  function append(node, force) {
    const stick = force || nearBottom();
    ui.messages.append(node);
    if (stick) scrollToBottom();
    else ui.jump.hidden = false;
  }

  function clearMessages() {
    ui.messages.replaceChildren();
    state.seen.clear();
    state.lastMsg = null;
    ui.jump.hidden = true;
  }

  function addSystem(text, kind) {
    const li = h('li', 'system' + (kind ? ` system-${kind}` : ''));
    li.append(h('span', 'system-text', text));
    if (kind !== 'divider') li.append(timeNode(Date.now()));
    state.lastMsg = null;
    append(li, false);
  }

  function addMessage(m, fromHistory) {
    const id = String(m.id);
    const username = String(m.username ?? '');
    const ts = typeof m.ts === 'number' ? m.ts : Date.now();
    state.seen.add(msgKey(m));
    const own = id === state.myId;
    const li = h('li', 'msg' + (own ? ' own' : '') + (fromHistory ? ' history' : ''));
    li.dataset.seq = String(m.seq ?? '');
    const grouped = state.lastMsg && state.lastMsg.id === id && ts - state.lastMsg.ts < GROUP_GAP_MS;
    if (grouped) li.classList.add('cont');
    li.append(avatar(username));
    const bubble = h('div', 'bubble');
    const meta = h('div', 'meta');
    const sender = h('span', 'sender', own ? `${username} (you)` : username);
    if (typeof m.user === 'string') sender.title = `Verified user ${m.user}`;
    meta.append(sender, timeNode(ts));
    bubble.append(meta, h('p', 'text', String(m.text ?? '')));
    li.append(bubble);
    state.lastMsg = { id, ts };
    append(li, own && !fromHistory);
  }

  function renderUsers() {
    const list = [...state.users].sort(([ia, a], [ib, b]) => {
      if (ia === state.myId) return -1;
      if (ib === state.myId) return 1;
      return a.localeCompare(b) || ia.localeCompare(ib);
    });
    ui.userList.replaceChildren(...list.map(([id, name]) => {
      const li = h('li', 'user' + (id === state.myId ? ' me' : ''));
      li.dataset.id = id;
      li.append(avatar(name, 'small'), h('span', 'name', name));
      if (id === state.myId) li.append(h('span', 'you', 'you'));
      return li;
    }));
    ui.userCount.textContent = String(state.users.size);
  }

  function clearTypers() {
    for (const t of state.typers.values()) clearTimeout(t.timer);
    state.typers.clear();
    renderTyping();
  }

  function dropTyper(id) {
    const t = state.typers.get(id);
    if (!t) return;
    clearTimeout(t.timer);
    state.typers.delete(id);
    renderTyping();
  }

  function renderTyping() {
    const names = [...state.typers.values()].map((t) => t.username);
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
    ui.typing.textContent = text;
  }

  // ---- views

  const phone = window.matchMedia('(max-width: 720px)');

  function showChat(focus) {
    const wasHidden = ui.chatView.hidden;
    ui.joinView.hidden = true;
    ui.chatView.hidden = false;
    if (wasHidden) {
      ui.people.open = !phone.matches;
      ui.switchBox.open = !phone.matches;
    }
    if (focus) ui.input.focus();
  }

  function showJoin() {
    ui.chatView.hidden = true;
    ui.joinView.hidden = false;
    document.title = 'roomchat';
    const last = loadLast();
    if (!ui.joinUsername.value && last.username) ui.joinUsername.value = last.username;
    if (last.room) ui.joinRoom.value = last.room;
    ui.joinStatus.textContent = '';
    refreshRooms();
    (ui.joinUsername.value || state.authRequired ? ui.joinRoom : ui.joinUsername).focus();
  }

  async function refreshRooms() {
    let rooms = [];
    try {
      const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
      const r = await fetch('/api/rooms', { cache: 'no-store', headers });
      if (r.ok) rooms = (await r.json()).rooms || [];
    } catch { /* the list is a nicety */ }
    rooms = rooms.filter((r) => r && typeof r.name === 'string').slice(0, 200);
    ui.suggestions.replaceChildren(...rooms.map((r) => { const o = document.createElement('option'); o.value = r.name; return o; }));
    const top = [...rooms].sort((a, b) => (b.users || 0) - (a.users || 0)).slice(0, 8);
    ui.activeRooms.hidden = top.length === 0;
    ui.activeRoomsList.replaceChildren(...top.map((r) => {
      const li = h('li');
      const b = h('button', 'chip');
      b.type = 'button';
      b.append(h('span', 'chip-name', r.name), h('span', 'chip-count', `${r.users} ${r.users === 1 ? 'person' : 'people'}`));
      b.addEventListener('click', () => { ui.joinRoom.value = r.name; ui.joinRoomError.textContent = ''; ui.joinButton.focus(); });
      li.append(b);
      return li;
    }));
  }

  // ---- user actions

  function setFieldError(input, errorNode, text) {
    errorNode.textContent = text || '';
    if (text) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  }

  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (state.stopped) return;
    const u = state.authRequired
      ? { value: state.me?.name || '' }
      : checkName(ui.joinUsername.value, 'name', LIMITS.username);
    const r = checkName(ui.joinRoom.value, 'room name', LIMITS.room);
    setFieldError(ui.joinUsername, ui.joinUsernameError, u.error);
    setFieldError(ui.joinRoom, ui.joinRoomError, r.error);
    if (u.error) { ui.joinUsername.focus(); return; }
    if (r.error) { ui.joinRoom.focus(); return; }
    ui.joinUsername.value = u.value;
    ui.joinRoom.value = r.value;
    saveLast(u.value, r.value);
    hideBanner();
    state.want = { username: u.value, room: r.value };
    state.lastRoom = null;
    if ((state.authRequired && !state.authed) || !sendJoin(u.value, r.value, 'join')) {
      ui.joinStatus.textContent = 'Not connected yet: you will join as soon as the connection is up.';
      retryNow();
    }
  });

  for (const [input, err] of [[ui.joinUsername, ui.joinUsernameError], [ui.joinRoom, ui.joinRoomError], [ui.switchRoom, ui.switchRoomError]]) {
    input.addEventListener('input', () => setFieldError(input, err, ''));
  }

  ui.switchForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const r = checkName(ui.switchRoom.value, 'room name', LIMITS.room);
    if (r.error) { setFieldError(ui.switchRoom, ui.switchRoomError, r.error); ui.switchRoom.focus(); return; }
    if (state.joined && r.value === state.joined.room) {
      setFieldError(ui.switchRoom, ui.switchRoomError, `You are already in ${r.value}.`);
      return;
    }
    const username = state.joined?.username || state.want?.username;
    if (!state.authed && state.authRequired) {
      setFieldError(ui.switchRoom, ui.switchRoomError, 'Not signed in yet: wait a moment.');
      return;
    }
    if (!sendJoin(username, r.value, 'switch')) {
      setFieldError(ui.switchRoom, ui.switchRoomError, 'Not connected: wait for the connection to come back.');
      return;
    }
    stopTyping();
    ui.switchRoom.value = '';
  });

  ui.leave.addEventListener('click', () => {
    stopTyping();
    state.want = null;
    state.lastRoom = null;
    if (!send('leaveRoom', undefined, { kind: 'leave' })) {
      state.joined = null;
    }
    clearTypers();
    showJoin();
  });

  function restoreText(text) {
    if (ui.input.value.trim() === '') {
      ui.input.value = text;
      autosize();
    }
  }

  function sendMessage() {
    const text = ui.input.value;
    const error = checkText(text);
    if (error) { ui.messageError.textContent = error; ui.input.focus(); return; }
    if (!state.joined) { ui.messageError.textContent = 'Not connected: your message stays here until the connection is back.'; return; }
    if (!send('chatMessage', { text }, { kind: 'message', text })) {
      ui.messageError.textContent = 'Not connected: your message stays here until the connection is back.';
      return;
    }
    ui.messageError.textContent = '';
    ui.input.value = '';
    autosize();
    stopTyping();
    ui.input.focus();
  }

  ui.composer.addEventListener('submit', (ev) => { ev.preventDefault(); sendMessage(); });

  ui.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.altKey && !ev.ctrlKey && !ev.metaKey && !ev.isComposing) {
      ev.preventDefault();
      sendMessage();
    }
  });

  ui.input.addEventListener('input', () => {
    autosize();
    ui.messageError.textContent = '';
    if (ui.input.value === '') { stopTyping(); return; }
    if (!state.typingSent && state.joined) {
      state.typingSent = send('typing', { typing: true }, { kind: 'typing' });
    }
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  });

  function stopTyping() {
    clearTimeout(state.typingTimer);
    if (state.typingSent) {
      state.typingSent = false;
      if (state.joined) send('typing', { typing: false }, { kind: 'typing' });
    }
  }

  function autosize() {
    ui.input.style.height = 'auto';
    ui.input.style.height = `${Math.min(ui.input.scrollHeight + 2, Math.round(window.innerHeight * 0.35))}px`;
  }

  ui.messages.addEventListener('scroll', () => { if (nearBottom()) ui.jump.hidden = true; });
  ui.jump.addEventListener('click', () => { scrollToBottom(); ui.input.focus(); });
  ui.retry.addEventListener('click', retryNow);
  ui.bannerClose.addEventListener('click', hideBanner);
  window.addEventListener('online', retryNow);
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape' && !ui.banner.hidden) hideBanner(); });

  // ---- start

  const last = loadLast();
  if (typeof last.username === 'string') ui.joinUsername.value = last.username;
  if (typeof last.room === 'string') ui.joinRoom.value = last.room;
  showJoin();
  connect();
})();
