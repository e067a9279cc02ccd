//! What a signed-in user can ask for with `ssh host <command>`: the built-ins (`whoami`,
//! `keys`, `sessions`, `share`, `watch`, `link`, …) and how other words are treated.

use super::*;

/// What an `exec` request turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Print the identity as JSON.
    Whoami,
    /// List the user's enrolled keys.
    Keys,
    /// Remove one of the user's enrolled keys.
    Revoke(String),
    /// Remove the enrollment of the key this connection used.
    Logout,
    /// Print a one-use link that logs a browser in as this user (and opens this session).
    Link(Option<String>),
    /// Run the configured program with these extra arguments.
    Program(Vec<String>),
    /// List the user's sessions, one JSON line each.
    Sessions,
    /// Attach one of the user's sessions.
    Attach(String),
    /// Start a new session even though one is detached.
    New,
    /// End one of the user's sessions.
    End(String),
    /// Mint a single-use link that lets someone watch a session read-only.
    Share(String),
    /// Watch a session shared with this token (read-only).
    Watch(String),
    /// The operator's views (`admin`, `admin sessions`, …), for operators by identity.
    Admin(Vec<String>),
    /// Refuse with this message.
    Refuse(String),
}

/// Decides what `ssh host <command>` does.
pub fn classify_exec(command: &str, policy: ExecPolicy) -> Work {
    let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    match words.first().map(String::as_str) {
        Some("whoami") if words.len() == 1 => Work::Whoami,
        Some("logout") if words.len() == 1 => Work::Logout,
        Some("keys") if words.len() == 1 => Work::Keys,
        Some("keys") if words.len() == 3 && words[1] == "revoke" => Work::Revoke(words[2].clone()),
        Some("link") if words.len() <= 2 => Work::Link(words.get(1).cloned()),
        Some("sessions") if words.len() == 1 => Work::Sessions,
        Some("attach") if words.len() == 2 => Work::Attach(words[1].clone()),
        Some("new") if words.len() == 1 => Work::New,
        Some("end") if words.len() == 2 => Work::End(words[1].clone()),
        Some("share") if words.len() == 2 => Work::Share(words[1].clone()),
        Some("watch") if words.len() == 2 => Work::Watch(words[1].clone()),
        Some("admin") => Work::Admin(words[1..].to_vec()),
        None => Work::Program(Vec::new()),
        Some(_) => match policy {
            ExecPolicy::Args => Work::Program(words),
            ExecPolicy::Refuse => Work::Refuse(format!(
                "hermes-ssh-gateway: command {:?} is not available here; built-ins: whoami, link, logout, keys, keys revoke SHA256:…, sessions, attach ID, new, end ID, share ID, watch TOKEN, admin (operators) (or connect without a command)",
                command.trim()
            )),
        },
    }
}

impl Job {
    pub(super) async fn work(self, identity: Identity, work: Work) {
        match work {
            Work::Whoami => {
                // The identity, plus the Unix account programs run as (as configured; the
                // account itself is resolved, or created, when a program starts).
                let account = self.ctx.launch.load().account_name(&identity.user_id);
                let mut json = serde_json::to_value(&identity).unwrap_or_default();
                if let (Some(obj), Some(a)) = (json.as_object_mut(), account) {
                    obj.insert("account".into(), a.into());
                }
                // The client's address as the gateway sees it (a trusted proxy's header, if any).
                if let (Some(obj), Some(r)) = (json.as_object_mut(), self.remote) {
                    obj.insert("remote".into(), r.to_string().into());
                }
                self.print(format!("{json}\n")).await;
                finish(&self.writer, 0).await;
            }
            Work::Logout => self.logout(&identity).await,
            Work::Keys => self.keys(&identity).await,
            Work::Revoke(fp) => self.revoke(&identity, &fp).await,
            Work::Link(session) => self.link(&identity, session.as_deref()).await,
            Work::Refuse(msg) => {
                tracing::info!(user = %identity.user_id, "refused exec: {msg}");
                self.refuse(&msg).await;
            }
            Work::Program(args) if args.is_empty() => self.resume_or_start(identity).await,
            Work::Program(args) => self.run_program(identity, args).await,
            Work::New => self.run_program(identity, Vec::new()).await,
            Work::Sessions => {
                let lines: String = self
                    .ctx
                    .hub
                    .of_user(&identity.user_id)
                    .iter()
                    .map(|s| format!("{}\n", s.describe()))
                    .collect();
                self.print(lines).await;
                finish(&self.writer, 0).await;
            }
            Work::Attach(id) => match self.ctx.hub.own(&identity.user_id, &id) {
                Some(session) if self.pty.is_some() => self.attach_to(session).await,
                Some(_) => {
                    self.refuse(
                        "hermes-ssh-gateway: attach needs a terminal (ssh -t host attach ID)",
                    )
                    .await
                }
                None => self.refuse(&not_yours(&id)).await,
            },
            Work::Share(id) => self.share(&identity, &id).await,
            Work::Watch(token) => self.watch(&identity, &token).await,
            Work::Admin(args) => self.admin(identity, args).await,
            Work::End(id) => match self.ctx.hub.own(&identity.user_id, &id) {
                Some(session) => {
                    session.live.end_with("ended by its user");
                    self.print(format!("ended session {id}\n")).await;
                    finish(&self.writer, 0).await;
                }
                None => self.refuse(&not_yours(&id)).await,
            },
        }
    }

    /// `share ID`: a single-use, short-lived ticket that lets any signed-in user watch.
    pub(super) async fn share(&self, identity: &Identity, id: &str) {
        if self.ctx.hub.own(&identity.user_id, id).is_none() {
            return self.refuse(&not_yours(id)).await;
        }
        match self
            .ctx
            .tickets
            .mint(identity, Purpose::Watch, Some(id), WATCH_TTL)
            .await
        {
            Ok(t) => {
                let token = t.expose_secret().to_owned();
                self.ctx.ops.emit(Event::Ticket {
                    op: TicketOp::Mint,
                    purpose: Purpose::Watch,
                    ok: true,
                });
                tracing::info!(user = %identity.user_id, session = id, "watch ticket minted");
                self.print(format!(
                    "Anyone signed in to this gateway can watch session {id} (read-only) once, within {}:\n  ssh -t <this host> watch {token}\n",
                    humantime::format_duration(WATCH_TTL)
                ))
                .await;
                finish(&self.writer, 0).await;
            }
            Err(e) => {
                tracing::error!(reason = %e, "minting a watch ticket failed");
                self.refuse("hermes-ssh-gateway: cannot share right now")
                    .await;
            }
        }
    }

    /// `watch TOKEN`: this user watches the shared session, read-only.
    pub(super) async fn watch(self, identity: &Identity, token: &str) {
        let consumed = self.ctx.tickets.consume(token, Purpose::Watch).await;
        self.ctx.ops.emit(Event::Ticket {
            op: TicketOp::Consume,
            purpose: Purpose::Watch,
            ok: consumed.is_ok(),
        });
        let session = match consumed {
            // Still the owner's: a session handed over is not watchable with an old link.
            Ok(r) => r
                .session
                .and_then(|id| self.ctx.hub.own(&r.identity.user_id, &id)),
            Err(reason) => {
                tracing::warn!(user = %identity.user_id, %reason, "refused: watch ticket");
                None
            }
        };
        let (Some(session), true) = (session, self.pty.is_some()) else {
            return self
                .refuse("hermes-ssh-gateway: this watch link is not valid (used, expired, or its session ended); watching needs ssh -t")
                .await;
        };
        let joining = Joining {
            who: format!(
                "{} from {} (watching)",
                identity.user_id,
                self.shown_remote()
            ),
            size: current_size(&self.resize).or(self.pty.as_ref().map(|p| p.size)),
            watcher: true,
            restore: true,
        };
        let sink: crate::sessions::Sink = Box::new(self.writer.make_writer());
        let attachment = session.attach(sink, joining).await;
        let audit = |what| Event::Attachment {
            owner: session.user.clone(),
            actor: Actor::User(identity.user_id.clone()),
            session: session.id.clone(),
            remote: self.remote,
            what,
        };
        self.ctx.ops.emit(audit(AttachmentKind::WatchStart));
        tracing::info!(user = %identity.user_id, owner = %session.user, session = session.id, "watching");
        let end = audit(AttachmentKind::WatchEnd);
        let ops = self.ctx.ops.clone();
        self.serve_client(session, attachment).await;
        ops.emit(end);
    }

    pub(super) async fn logout(&self, identity: &Identity) {
        let fp = identity.key_fingerprint.clone().unwrap_or_default();
        match identity.method {
            AuthMethod::EnrolledKey => match self.ctx.enrollments.remove(&fp).await {
                Ok(_) => {
                    tracing::info!(user = %identity.user_id, key = %fp, "logout: key enrollment removed");
                    self.ctx.ops.emit(Event::Logout {
                        user: identity.user_id.clone(),
                        key: fp.clone(),
                    });
                    self.print(format!(
                        "Signed out: key {fp} is no longer linked to {}. The next connection signs in again.\n",
                        identity.user_id
                    ))
                    .await;
                    finish(&self.writer, 0).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "logout failed");
                    self.refuse("hermes-ssh-gateway: logout failed: the gateway's state store is unavailable").await;
                }
            },
            AuthMethod::Key => {
                self.refuse(&format!(
                    "hermes-ssh-gateway: key {fp} is mapped to {} by the operator; ask them to remove it from the users directory",
                    identity.user_id
                ))
                .await
            }
            _ => self.refuse("hermes-ssh-gateway: this connection used no linked key; nothing to sign out").await,
        }
    }

    /// `keys`: the user's enrolled keys, one line each.
    pub(super) async fn keys(&self, identity: &Identity) {
        let list = match self.ctx.enrollments.list(Some(&identity.user_id)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "listing enrollments failed");
                return self
                    .refuse("hermes-ssh-gateway: the gateway's state store is unavailable")
                    .await;
            }
        };
        let mut out = String::new();
        if list.is_empty() {
            out.push_str(&format!("No keys are enrolled for {}.\n", identity.user_id));
        }
        let day = |t: u64| {
            chrono::DateTime::from_timestamp(t as i64, 0)
                .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default()
        };
        for (fp, e) in list {
            let this = identity.key_fingerprint.as_deref() == Some(fp.as_str());
            out.push_str(&format!(
                "{fp}  added {}  expires {}  last used {}{}\n",
                day(e.enrolled_at),
                day(e.expires_at),
                e.last_used.map(day).unwrap_or_else(|| "never".into()),
                if this { "  (this key)" } else { "" }
            ));
        }
        self.print(out).await;
        finish(&self.writer, 0).await;
    }

    /// `keys revoke FP`: removes one of this user's enrolled keys.
    pub(super) async fn revoke(&self, identity: &Identity, fp: &str) {
        let store = &self.ctx.enrollments;
        let theirs = matches!(store.lookup(fp).await, Ok(Some(e)) if e.user_id == identity.user_id);
        if !theirs {
            return self
                .refuse(&format!(
                    "hermes-ssh-gateway: no enrolled key {fp} of {}",
                    identity.user_id
                ))
                .await;
        }
        match store.remove(fp).await {
            Ok(_) => {
                tracing::info!(user = %identity.user_id, key = fp, "enrolled key revoked by its user");
                self.ctx.ops.emit(Event::Revoked {
                    user: identity.user_id.clone(),
                    key: fp.to_owned(),
                    by: RevokedBy::User,
                });
                self.print(format!(
                    "Revoked {fp}: it no longer logs in as {}.\n",
                    identity.user_id
                ))
                .await;
                finish(&self.writer, 0).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "revoking an enrollment failed");
                self.refuse("hermes-ssh-gateway: the gateway's state store is unavailable")
                    .await;
            }
        }
    }

    /// `link`: a 60-second, single-use URL that logs a browser in as this user.
    pub(super) async fn link(&self, identity: &Identity, session: Option<&str>) {
        let Some(web) = &self.ctx.web_link else {
            return self
                .refuse("hermes-ssh-gateway: the web front is not enabled on this gateway")
                .await;
        };
        if let Some(id) = session.filter(|id| self.ctx.hub.own(&identity.user_id, id).is_none()) {
            return self.refuse(&not_yours(id)).await;
        }
        // The session travels inside the ticket: the URL stays one opaque token.
        match web
            .tickets
            .mint(identity, Purpose::WebLogin, session, LINK_TTL)
            .await
        {
            Ok(t) => {
                tracing::info!(user = %identity.user_id, "web login link minted");
                self.ctx.ops.emit(Event::Ticket {
                    op: TicketOp::Mint,
                    purpose: Purpose::WebLogin,
                    ok: true,
                });
                self.print(format!(
                    "{}/auth/ticket?t={}\n",
                    web.public_url,
                    t.expose_secret()
                ))
                .await;
                finish(&self.writer, 0).await;
            }
            Err(e) => {
                tracing::error!(reason = %e, "minting a web login ticket failed");
                self.refuse("hermes-ssh-gateway: cannot create a link right now")
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn exec_classification() {
        assert_eq!(classify_exec("whoami", ExecPolicy::Refuse), Work::Whoami);
        assert_eq!(classify_exec("  whoami ", ExecPolicy::Args), Work::Whoami);
        assert!(matches!(
            classify_exec("rm -rf /", ExecPolicy::Refuse),
            Work::Refuse(_)
        ));
        assert_eq!(
            classify_exec("--model x; echo", ExecPolicy::Args),
            Work::Program(vec!["--model".into(), "x;".into(), "echo".into()])
        );
    }
}
