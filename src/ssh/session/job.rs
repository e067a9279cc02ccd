//! One channel's job: sign-in, starting the program or resuming a session, and serving the
//! channel as one of the session's clients until it ends.

use super::*;

impl Job {
    pub(super) async fn run(self, start: Start) {
        match start {
            Start::Work(identity, work) => self.work(identity, work).await,
            Start::SignIn(pending) => self.sign_in(pending).await,
            Start::Refuse(msg) => {
                tracing::info!("refused: {msg}");
                self.refuse(&msg).await;
            }
        }
    }

    pub(super) async fn refuse(&self, msg: &str) {
        let _ = self
            .writer
            .extended_data_bytes(1, Bytes::from(format!("{msg}\r\n")))
            .await;
        finish(&self.writer, 1).await;
    }

    pub(super) async fn print(&self, text: String) {
        let _ = self.writer.data_bytes(Bytes::from(text)).await;
    }

    /// A plain login: sessions that ended while the user was away are reported, then the most
    /// recently active detached session is resumed, or a new program starts.
    pub(super) async fn resume_or_start(mut self, identity: Identity) {
        for line in self.ctx.hub.take_reports(&identity.user_id) {
            ChannelNotice(&self.writer).notice(&line).await;
        }
        let detached = self.ctx.hub.detached_of(&identity.user_id);
        if self.pty.is_none() || detached.is_empty() {
            return self.run_program(identity, Vec::new()).await;
        }
        let choice = if detached.len() == 1 {
            Choice::Attach(0)
        } else {
            self.pick(&detached).await
        };
        match choice {
            Choice::Attach(i) => {
                let session = detached[i].clone();
                tracing::info!(user = %identity.user_id, session = session.id, "reattaching");
                self.attach_to(session).await
            }
            Choice::New => self.run_program(identity, Vec::new()).await,
            Choice::Quit => finish(&self.writer, 0).await,
        }
    }

    /// Several detached sessions: the user picks one (or a new one) on a ratatui screen.
    pub(super) async fn pick(&mut self, sessions: &[Arc<Running>]) -> Choice {
        let entries = sessions
            .iter()
            .map(|s| {
                let started = chrono::DateTime::<chrono::Utc>::from(s.started);
                let quiet = s.live.since_output_ms() / 1000;
                PickerEntry {
                    id: s.id.clone(),
                    started: started.format("%H:%M UTC").to_string(),
                    last_output: match quiet {
                        0..60 => format!("{quiet}s ago"),
                        60..3600 => format!("{}m ago", quiet / 60),
                        _ => format!("{}h ago", quiet / 3600),
                    },
                    command: s.command.clone(),
                }
            })
            .collect();
        let mut picker = Picker::new(entries);
        let draw = |p: &Picker, resize: &SharedResize, initial: TermSize| {
            let size = current_size(resize).unwrap_or(initial);
            Bytes::from(p.render(size.cols, size.rows))
        };
        let initial = self.pty.as_ref().map(|p| p.size).unwrap_or_default();
        let _ = self
            .writer
            .data_bytes(draw(&picker, &self.resize, initial))
            .await;
        let choice = loop {
            tokio::select! {
                data = self.input.recv() => match data {
                    Some(d) => match picker.key(&d) {
                        Some(c) => break c,
                        None => {
                            let _ = self.writer.data_bytes(draw(&picker, &self.resize, initial)).await;
                        }
                    },
                    None => break Choice::Quit,
                },
                _ = self.closed.cancelled() => break Choice::Quit,
            }
        };
        let _ = self
            .writer
            .data_bytes(Bytes::from_static(crate::tui::picker::LEAVE))
            .await;
        choice
    }

    /// Device sign-in for a pending connection, then the program.
    pub(super) async fn sign_in(mut self, pending: Pending) {
        let Some(oidc) = self.ctx.oidc.clone() else {
            return self
                .refuse("hermes-ssh-gateway: sign-in is not configured")
                .await;
        };
        let resize = self.resize.clone();
        let size: Option<Box<dyn Fn() -> TermSize + Send>> = self.pty.as_ref().map(|p| {
            let initial = p.size;
            Box::new(move || current_size(&resize).unwrap_or(initial))
                as Box<dyn Fn() -> TermSize + Send>
        });
        let note = self.signin_note(&pending);
        let io = crate::ssh::signin::SigninIo {
            writer: &self.writer,
            input: &mut self.input,
            closed: &self.closed,
            size,
            note,
        };
        self.ctx.ops.emit(Event::DeviceFlow { started: true });
        let result = crate::ssh::signin::run(io, &oidc).await;
        // An IdP user never gets a key-file user's id by choosing a claim value.
        let result = result.and_then(|approved| {
            self.ctx.namespaces.admit(&approved.identity)?;
            Ok(approved)
        });
        let (result, refresh_token) = match result {
            Ok(a) => (Ok(a.identity), a.refresh_token),
            Err(e) => (Err(e), None),
        };
        self.ctx.ops.emit(Event::DeviceFlow { started: false });
        self.ctx.ops.emit(Event::Auth {
            user: result.as_ref().ok().map(|i| i.user_id.clone()),
            method: Method::DeviceFlow,
            key: pending.proven_key.as_ref().map(|k| k.fingerprint.clone()),
            remote: self.remote,
            failure: result.as_ref().err().map(|e| e.to_string()),
            certificate: None,
        });
        let mut identity = match result {
            Ok(id) => id,
            Err(e) => {
                if let Ok(mut st) = self.state.lock() {
                    *st = ConnState::Unauthenticated;
                }
                if self.closed.is_cancelled() {
                    tracing::info!("client left during sign-in; polling stopped");
                } else {
                    tracing::info!(reason = %e, "device sign-in failed");
                    if let crate::identity::oidc::FlowError::InvalidToken(detail) = &e {
                        tracing::warn!(
                            detail = detail as &dyn std::error::Error,
                            "ID token refused"
                        );
                    }
                    self.refuse(&format!("hermes-ssh-gateway: {e}")).await;
                }
                // The connection ends here (after the one-line reason, queued before this):
                // a failed sign-in must not leave a connection that can open more channels
                // or be kept alive by keepalives.
                self.progress
                    .set(Stage::Failed(format!("sign-in failed: {e}")));
                return;
            }
        };
        if let Some(key) = &pending.proven_key {
            identity.key_fingerprint = Some(key.fingerprint.clone());
            self.enroll(&identity, &key.fingerprint, refresh_token)
                .await;
        }
        // The pending slot is freed here; the connection is now this identity.
        drop(pending);
        if let Ok(mut st) = self.state.lock() {
            *st = ConnState::Identity(identity.clone());
        }
        self.progress.set(Stage::SignedIn);
        self.ctx.bans_success(self.remote).await;
        tracing::Span::current().record("user", identity.user_id.as_str());
        tracing::info!(user = %identity.user_id, method = %identity.method, provider = %identity.provider, key = identity.key_fingerprint.as_deref().unwrap_or("-"), "authenticated");
        let who = match &identity.email {
            Some(e) => format!("{} ({e})", identity.user_id),
            None => identity.user_id.to_string(),
        };
        self.print(format!("Signed in as {who}.\r\n")).await;
        self.run_program(identity, Vec::new()).await;
    }

    /// The line the sign-in screen shows under the code: which key this sign-in binds and for
    /// how long (`keys` lists it later), and why the key no longer logs in by itself when a
    /// re-check just ended it.
    fn signin_note(&self, pending: &Pending) -> Option<String> {
        let remembers = pending
            .proven_key
            .as_ref()
            .filter(|_| !self.ctx.enroll_ttl.is_zero())
            .map(|k| {
                let until = chrono::Utc::now()
                    + chrono::Duration::from_std(self.ctx.enroll_ttl).unwrap_or_default();
                format!(
                    "Remembers key {} until {}",
                    k.fingerprint,
                    until.format("%Y-%m-%d")
                )
            });
        let revoked = pending
            .revoked
            .as_ref()
            .map(|why| format!("This key's enrollment ended: {why}. Sign in again."));
        match (revoked, remembers) {
            (Some(a), Some(b)) => Some(format!("{a}\n{b}")),
            (a, b) => a.or(b),
        }
    }

    /// Binds the key that proved itself before the sign-in to `identity`, for `enroll_ttl`.
    async fn enroll(
        &self,
        identity: &Identity,
        fingerprint: &str,
        refresh_token: Option<secrecy::SecretString>,
    ) {
        if self.ctx.enroll_ttl.is_zero() {
            return;
        }
        let mut e = Enrollment::new(identity, self.ctx.enroll_ttl);
        e.refresh_token = refresh_token.map(|t| RefreshToken::new(t.expose_secret().to_owned()));
        match self.ctx.enrollments.bind(fingerprint, e).await {
            Ok(()) => {
                tracing::info!(user = %identity.user_id, key = %fingerprint, ttl = ?self.ctx.enroll_ttl, "key enrolled");
                // The README's audit schema always listed it; nothing emitted it.
                self.ctx.ops.emit(Event::Enrolled {
                    user: identity.user_id.clone(),
                    key: fingerprint.to_owned(),
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "enrolling the key failed; the user will sign in again next time")
            }
        }
    }

    pub(super) async fn run_program(mut self, identity: Identity, extra_args: Vec<String>) {
        let mut started = match self.start_program(&identity, extra_args).await {
            Ok(s) => s,
            Err(NotStarted::Refused) => return,
            Err(NotStarted::Failed(e)) => return self.show_failure(&identity, &e).await,
        };
        let user = started.live.user.clone();
        let rules = Rules {
            ops: self.ctx.ops.clone(),
            shutdown: self.ctx.shutdown.clone(),
            idle: self.ctx.limits.idle_timeout,
        };
        let io = started.io;
        let (Some(pty), Some(resizer)) = (self.pty.as_ref(), started.resizer) else {
            // Pipes: the session is this connection's and ends with it.
            let out = tokio::spawn(pump_out(
                io.output,
                self.writer.make_writer(),
                started.live.clone(),
            ));
            let err = io.stderr.map(|e| {
                tokio::spawn(pump_out(
                    e,
                    self.writer.make_writer_ext(Some(1)),
                    started.live.clone(),
                ))
            });
            self.feed_input(io.input, &started.live);
            let supervised = Started {
                process: started.process,
                live: started.live,
                guard: started.guard,
                out,
                err,
                started: started.started,
            };
            let presence = Presence::Connection(self.closed.clone());
            let outcome =
                supervise(supervised, rules, presence, &ChannelNotice(&self.writer)).await;
            if let Some(n) = &outcome.notice {
                ChannelNotice(&self.writer).notice(n).await;
            }
            if let Some(code) = outcome.code {
                finish(&self.writer, code).await;
            }
            return;
        };
        // A PTY: the session belongs to the gateway, and this connection is its first client.
        let size = current_size(&self.resize).unwrap_or(pty.size);
        let session = Running::new(
            identity.user_id.clone(),
            started.live.command.clone(),
            started.live.clone(),
            resizer,
            size,
            (!self.ctx.detach.timeout.is_zero()).then_some(self.ctx.detach.scrollback),
            self.ctx.ops.clone(),
        );
        let recorder = started.recorder.take();
        if let Ok(mut slot) = self.resize.lock() {
            slot.recorder = recorder.clone();
        }
        // The first client is attached before any output is read: a program that prints and
        // exits at once must not print to nobody. Its size is the latest (a window-change may
        // have arrived while the program was starting).
        let attachment = self.join(&session, false).await;
        drop(io.input);
        crate::sessions::take_over(
            &self.ctx.hub,
            &session,
            io.output,
            recorder,
            |out| Started {
                process: started.process,
                live: started.live,
                guard: started.guard,
                out,
                err: None,
                started: started.started,
            },
            rules,
            self.ctx.detach.timeout,
        );
        tracing::debug!(user = %user, session = session.id, "session core took the program");
        self.serve_client(session, attachment).await;
    }

    /// Reattaches `session`: this client gets its screen as it stands, then live output.
    pub(super) async fn attach_to(self, session: Arc<Running>) {
        let attachment = self.join(&session, true).await;
        self.audit_attachment(&session, AttachmentKind::Attach);
        self.serve_client(session, attachment).await
    }

    /// This channel becomes a client of `session`, beside any others.
    pub(super) async fn join(&self, session: &Arc<Running>, restore: bool) -> Attachment {
        let sink: crate::sessions::Sink = Box::new(self.writer.make_writer());
        let joining = Joining {
            who: format!("{} from {}", session.user, self.shown_remote()),
            size: current_size(&self.resize).or(self.pty.as_ref().map(|p| p.size)),
            watcher: false,
            restore,
        };
        let attachment = session.attach(sink, joining).await;
        if let Ok(mut slot) = self.resize.lock() {
            slot.session = Some((session.clone(), attachment.clone()));
        }
        attachment
    }

    /// `attach` / `detach` in the audit log.
    pub(super) fn audit_attachment(&self, session: &Running, what: AttachmentKind) {
        self.ctx.ops.emit(Event::Attachment {
            owner: session.user.clone(),
            actor: Actor::User(session.user.clone()),
            session: session.id.clone(),
            remote: self.remote,
            what,
        });
    }

    /// Stays this session's client until the client leaves (the session is then detached),
    /// another client takes it over, or it ends.
    pub(super) async fn serve_client(mut self, session: Arc<Running>, attachment: Attachment) {
        let user = session.user.to_string();
        self.feed_input(session.input_for(&attachment), &session.live);
        let mut outcome = session.outcome();
        tokio::select! {
            _ = self.closed.cancelled() => {
                session.detach(&attachment).await;
                if !self.ctx.detach.timeout.is_zero() && !attachment.is_watcher() {
                    tracing::info!(user, session = session.id, "client left; session detached");
                    self.audit_attachment(&session, AttachmentKind::Detach);
                    self.ctx.hub.cap_detached(&session.user, self.ctx.detach.max_per_user);
                }
            }
            _ = attachment.gone.cancelled() => {
                // The program's last output before its exit status.
                attachment.flushed().await;
                let ended = outcome.borrow_and_update().clone();
                match ended {
                    Some(o) => {
                        if let Some(n) = &o.notice {
                            ChannelNotice(&self.writer).notice(n).await;
                        }
                        if let Some(code) = o.code {
                            finish(&self.writer, code).await;
                        }
                    }
                    // The session dropped this client (it could not be written to).
                    None => finish(&self.writer, 255).await,
                }
            }
        }
    }

    /// From now on the channel reader writes client input straight into `to` (no extra task
    /// hop per keystroke), after what was queued before the program started.
    pub(super) fn feed_input(
        &mut self,
        to: Box<dyn AsyncWrite + Send + Unpin>,
        live: &Arc<LiveSession>,
    ) {
        let queued = std::mem::replace(&mut self.input, mpsc::channel(1).1);
        if let Some(attach) = self.attach.take() {
            let _ = attach.send(Attach {
                queued,
                to,
                live: live.clone(),
            });
        }
    }

    /// Registers, prepares and starts the program, and starts its recording; on failure the
    /// user has been told and `None` comes back.
    pub(super) async fn start_program(
        &mut self,
        identity: &Identity,
        extra_args: Vec<String>,
    ) -> Result<StartedProgram, NotStarted> {
        let user = identity.user_id.to_string();
        let launch = self.ctx.launch.load_full();
        let command = launch.command.display();
        let guard = match self
            .ctx
            .ops
            .sessions
            .register(
                NewSession::of(identity, Front::Ssh, self.remote, command.clone()),
                self.ctx.limits.max_sessions_per_user,
            )
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.ctx.ops.emit(Event::Refused {
                    user: Some(identity.user_id.clone()),
                    remote: self.remote,
                    what: e.to_string(),
                });
                tracing::warn!(user, "refused: {e}");
                self.refuse(&format!("hermes-ssh-gateway: {e}")).await;
                return Err(NotStarted::Refused);
            }
        };
        let live = guard.session.clone();
        let session_env = SessionEnv {
            term: self.pty.as_ref().map(|p| p.term.clone()),
            client: std::mem::take(&mut self.env),
        };
        let id = identity.clone();
        let spec = launch.clone();
        let prepared =
            tokio::task::spawn_blocking(move || spec.prepare(&id, &session_env, &extra_args))
                .await
                .unwrap_or_else(|e| Err(LaunchError::Other(e.to_string())));
        let size = self
            .pty
            .as_ref()
            .map(|pty| current_size(&self.resize).unwrap_or(pty.size));
        let spawned = match prepared {
            Ok(p) => match (&self.pty, size) {
                (Some(pty), Some(size)) => launcher::spawn_pty(p, size, pty.modes.clone())
                    .await
                    .map(|(s, r)| (s, Some(r))),
                _ => launcher::spawn_pipes(p).map(|s| (s, None)),
            },
            Err(e) => Err(e),
        };
        let (launcher::Spawned { process, io }, resizer) = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let LaunchError::Account(a) = &e {
                    // No usable account is a security decision: it goes to the audit log too.
                    self.ctx.ops.emit(Event::Refused {
                        user: Some(identity.user_id.clone()),
                        remote: self.remote,
                        what: a.to_string(),
                    });
                }
                return Err(NotStarted::Failed(e));
            }
        };
        tracing::info!(
            user,
            pid = process.pid(),
            session_id = live.id,
            pty = self.pty.is_some(),
            account = process.account().name,
            "program started"
        );
        self.ctx.ops.emit(live.started(
            size.map(|s| (s.cols, s.rows)),
            &process.account().name,
            process.account().uid,
        ));
        let recorder = match (&self.ctx.recording_dir, &self.pty, size) {
            (Some(dir), Some(pty), Some(size)) => {
                match Recorder::start(dir, &user, live.id, size.cols, size.rows, &pty.term).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the session recording; the session goes on");
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(StartedProgram {
            process,
            io,
            resizer,
            live,
            guard,
            recorder,
            started: std::time::Instant::now(),
        })
    }

    /// The client's address as the other clients of a session are told it.
    pub(super) fn shown_remote(&self) -> String {
        self.remote
            .map(|r| r.to_string())
            .unwrap_or_else(|| "an unknown address".into())
    }

    /// The program could not start: tell the user clearly instead of disconnecting.
    pub(super) async fn show_failure(mut self, identity: &Identity, error: &LaunchError) {
        tracing::error!(user = %identity.user_id, error = %error, "cannot start the session program");
        let code = match error {
            LaunchError::NotFound { .. } => 127,
            LaunchError::NotExecutable { .. } => 126,
            _ => 1,
        };
        let command = self.ctx.launch.load().command.display();
        match &self.pty {
            Some(pty) => {
                let size = current_size(&self.resize).unwrap_or(pty.size);
                let screen =
                    crate::tui::fallback::render(identity, &command, error, size.cols, size.rows);
                let _ = self.writer.data_bytes(Bytes::from(screen)).await;
                // Wait for a key (or a timeout) so the user can read it, then restore the screen.
                let _ = tokio::time::timeout(Duration::from_secs(120), async {
                    tokio::select! {
                        _ = self.input.recv() => {},
                        _ = self.closed.cancelled() => {},
                    }
                })
                .await;
                let _ = self
                    .writer
                    .data_bytes(Bytes::from_static(crate::tui::fallback::LEAVE))
                    .await;
            }
            None => {
                let text = crate::tui::fallback::plain(identity, &command, error);
                let _ = self.writer.extended_data_bytes(1, Bytes::from(text)).await;
            }
        }
        finish(&self.writer, code).await;
    }
}
