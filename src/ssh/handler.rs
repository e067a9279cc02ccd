//! The russh `Handler`: thin. Each callback turns into a call on [`Authenticator`] or
//! [`Channels`] and a protocol answer; refusals are logged with the user id.

use std::sync::Arc;

use russh::keys::ssh_key::{Certificate, PublicKey};
use russh::server::ChannelOpenHandle;
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedCertificate, VerifiedPublicKey};
use russh::{Channel, ChannelId, Pty};
use tracing::Span;

use super::auth::{fp, fp_data, Authenticator, Decision, KbdDecision, Principal};
use super::server::{AuthProgress, Stage};
use super::session::{Channels, PtyParams, Request};
use super::SshContext;
use crate::identity::certs::CertificateInfo;
use crate::identity::UserId;
use crate::launcher::{ControlChar, ModeFlag, TermSize, TerminalModes};
use crate::ops::{Event, Method, RevokedBy};

/// One connection's handler.
pub struct ConnectionHandler {
    auth: Authenticator,
    channels: Channels,
    ctx: Arc<SshContext>,
    progress: Arc<AuthProgress>,
    span: Span,
}

impl ConnectionHandler {
    /// A handler for a new connection from `remote`, logging into `span`.
    pub fn new(
        ctx: Arc<SshContext>,
        remote: Option<std::net::IpAddr>,
        progress: Arc<AuthProgress>,
        span: Span,
    ) -> ConnectionHandler {
        ConnectionHandler {
            channels: Channels::new(ctx.clone(), remote, progress.clone(), span.clone()),
            progress,
            auth: Authenticator::new(
                ctx.registry.clone(),
                ctx.enrollments.clone(),
                ctx.limiter.clone(),
                remote,
            )
            .with_namespaces(ctx.namespaces.clone())
            .with_policy(ctx.key_policy.clone())
            .with_recheck_from(&ctx),
            ctx,
            span,
        }
    }

    fn refuse(&self, what: &str) {
        let user = self.auth.user();
        tracing::warn!(parent: &self.span, user = user.map(UserId::as_str), "refused: {what}");
        self.ctx.ops.emit(Event::Refused {
            user: user.cloned(),
            remote: self.auth.remote(),
            what: what.to_owned(),
        });
    }

    /// Audits an attempt; `failure` is `None` on success.
    fn audit_auth(
        &self,
        user: Option<UserId>,
        method: Method,
        key: Option<String>,
        failure: Option<&str>,
    ) {
        self.audit_auth_cert(user, method, key, failure, None);
    }

    fn audit_auth_cert(
        &self,
        user: Option<UserId>,
        method: Method,
        key: Option<String>,
        failure: Option<&str>,
        certificate: Option<CertificateInfo>,
    ) {
        self.ctx.ops.emit(Event::Auth {
            user,
            method,
            key,
            remote: self.auth.remote(),
            failure: failure.map(str::to_owned),
            certificate,
        });
    }

    fn refuse_certificate(&self, cert: &Certificate, reason: &str) {
        let key = fp_data(cert.public_key());
        tracing::info!(parent: &self.span, key, key_id = cert.key_id(), serial = cert.serial(), reason, "certificate refused");
        let info = CertificateInfo::of(cert, String::new());
        self.audit_auth_cert(
            None,
            Method::Certificate,
            Some(key),
            Some(reason),
            Some(info),
        );
    }

    fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: None,
        partial_success: false,
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.progress.attempt();
        match self
            .auth
            .offered(offer.public_key, offer.certificate, user)
            .await
        {
            Ok(()) => Ok(Auth::Accept),
            Err(reason) => {
                if let Some(cert) = offer.certificate {
                    self.refuse_certificate(cert, &reason);
                } else {
                    tracing::info!(parent: &self.span, key = %fp(offer.public_key), reason, "publickey refused");
                    self.audit_auth(None, Method::Key, Some(fp(offer.public_key)), Some(&reason));
                }
                Ok(reject())
            }
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: VerifiedCertificate<'_>,
    ) -> Result<Auth, Self::Error> {
        let certificate = cert.certificate;
        match self
            .auth
            .verified_certificate(certificate, cert.signature_flags, user)
        {
            Decision::Accept(id) => {
                self.span.record("user", id.user_id.as_str());
                let key = id.key_fingerprint.clone();
                tracing::info!(parent: &self.span, user = %id.user_id, method = %id.method, key_id = certificate.key_id(), serial = certificate.serial(), "authenticated");
                self.audit_auth_cert(
                    Some(id.user_id.clone()),
                    Method::Certificate,
                    key,
                    None,
                    id.certificate.as_deref().cloned(),
                );
                Ok(Auth::Accept)
            }
            Decision::Reject(reason) => {
                self.refuse_certificate(certificate, &reason);
                Ok(reject())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let pk: &PublicKey = key.public_key;
        let decision = self.auth.verified(pk, key.signature_flags).await;
        if let Some(r) = self.auth.take_revoked() {
            self.audit_auth(
                Some(r.user.clone()),
                Method::EnrolledKey,
                Some(r.key.clone()),
                Some(&r.reason),
            );
            self.ctx.ops.emit(Event::Revoked {
                user: r.user,
                key: r.key,
                by: RevokedBy::IdentityProvider,
            });
        }
        match decision {
            Decision::Accept(id) => {
                self.span.record("user", id.user_id.as_str());
                tracing::info!(parent: &self.span, user = %id.user_id, method = %id.method, key = %fp(pk), "authenticated");
                self.audit_auth(
                    Some(id.user_id.clone()),
                    id.method.into(),
                    Some(fp(pk)),
                    None,
                );
                Ok(Auth::Accept)
            }
            Decision::Reject(reason) => {
                tracing::info!(parent: &self.span, key = %fp(pk), reason, "publickey refused");
                self.audit_auth(None, Method::Key, Some(fp(pk)), Some(&reason));
                Ok(reject())
            }
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.progress.attempt();
        match self.auth.keyboard_interactive(response.is_some()).await {
            KbdDecision::Prompt => Ok(Auth::Partial {
                name: "".into(),
                // Shown only at LogLevel INFO and ASCII-only in OpenSSH; the real sign-in
                // screen comes as channel data once connected.
                instructions:
                    "Sign in to Hermes with your identity provider: the link and code appear next."
                        .into(),
                prompts: Vec::new().into(),
            }),
            KbdDecision::Accept => {
                tracing::info!(parent: &self.span, "admitted to device sign-in (pending)");
                Ok(Auth::Accept)
            }
            KbdDecision::Reject(reason) => {
                tracing::warn!(parent: &self.span, reason, "keyboard-interactive refused");
                self.audit_auth(None, Method::KeyboardInteractive, None, Some(&reason));
                Ok(reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let _ = session;
        match self.auth.take_principal() {
            Some(p @ Principal::Identity(_)) => {
                // Only a real sign-in clears the address's failures: being admitted to device
                // sign-in proves nothing yet.
                self.ctx.bans_success(self.auth.remote()).await;
                self.progress.set(Stage::SignedIn);
                if let Some(reason) = self.auth.no_pty() {
                    self.channels.forbid_pty(reason);
                }
                if let Some(command) = self.auth.forced_command() {
                    // The gateway runs one program; running the certificate's command instead
                    // would hand the CA's choice of program to whoever holds the certificate.
                    let line = format!(
                        "hermes-ssh-gateway: your certificate forces the command {command:?}; this gateway runs only its own program, so it cannot honour that. Ask for a certificate without force-command."
                    );
                    self.refuse(&format!("session (certificate force-command {command:?})"));
                    self.channels.refuse_sessions(line);
                }
                self.channels.set_principal(p);
            }
            Some(p @ Principal::Pending(_)) => {
                self.progress.set(Stage::Pending);
                self.channels.set_principal(p);
            }
            None => {}
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.may_open(&self.progress.stage()) {
            Ok(()) => {
                reply.accept().await;
                self.channels.open(channel);
            }
            Err(why) => {
                self.refuse(&format!("session channel: {why}"));
                reply
                    .reject(russh::ChannelOpenFailure::ResourceShortage)
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.close(channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let params = PtyParams {
            term: term.to_owned(),
            size: TermSize::clamped(col_width, row_height, pix_width, pix_height),
            modes: terminal_modes(modes),
        };
        let ok = self.channels.pty_request(channel, params);
        if let Some(reason) = self.channels.pty_forbidden().filter(|_| !ok) {
            self.refuse(&format!("PTY ({reason})"));
        }
        Self::reply(session, channel, ok)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // window-change never wants a reply (RFC 4254 §6.7).
        let size = TermSize::clamped(col_width, row_height, pix_width, pix_height);
        self.channels.window_change(channel, size);
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let user = self.auth.user().cloned();
        let ok = self
            .channels
            .env_request(channel, variable_name, variable_value, user);
        Self::reply(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = self.channels.start(channel, Request::Shell);
        Self::reply(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let ok = self.channels.start(channel, Request::Exec(command));
        Self::reply(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(&format!("subsystem {name:?}"));
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("X11 forwarding");
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("agent forwarding");
        Ok(false)
    }

    // The forwarding opens below drop their `_reply` unanswered on purpose: russh answers a
    // channel open that the handler neither accepts nor rejects with
    // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED, which is exactly what a client should be told.
    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(&format!(
            "local port forwarding to {host_to_connect}:{port_to_connect}"
        ));
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(&format!("unix socket forwarding to {socket_path:?}"));
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("X11 channel");
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(&format!("remote port forwarding from {address}:{port}"));
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(&format!("remote unix socket forwarding {socket_path:?}"));
        Ok(false)
    }
}

/// RFC 4254 terminal modes → the launcher's plain types (only the ones that matter for a TUI).
fn terminal_modes(modes: &[(Pty, u32)]) -> TerminalModes {
    let mut out = TerminalModes::default();
    for &(mode, value) in modes {
        let ch = |c: ControlChar| (c, value.min(255) as u8);
        let flag = |f: ModeFlag| (f, value != 0);
        match mode {
            Pty::VINTR => out.chars.push(ch(ControlChar::Intr)),
            Pty::VQUIT => out.chars.push(ch(ControlChar::Quit)),
            Pty::VERASE => out.chars.push(ch(ControlChar::Erase)),
            Pty::VKILL => out.chars.push(ch(ControlChar::Kill)),
            Pty::VEOF => out.chars.push(ch(ControlChar::Eof)),
            Pty::VSUSP => out.chars.push(ch(ControlChar::Susp)),
            Pty::VWERASE => out.chars.push(ch(ControlChar::Werase)),
            Pty::VLNEXT => out.chars.push(ch(ControlChar::Lnext)),
            Pty::VREPRINT => out.chars.push(ch(ControlChar::Rprnt)),
            Pty::ICRNL => out.flags.push(flag(ModeFlag::Icrnl)),
            Pty::IXON => out.flags.push(flag(ModeFlag::Ixon)),
            Pty::IUTF8 => out.flags.push(flag(ModeFlag::Iutf8)),
            Pty::ISIG => out.flags.push(flag(ModeFlag::Isig)),
            Pty::ICANON => out.flags.push(flag(ModeFlag::Icanon)),
            Pty::ECHO => out.flags.push(flag(ModeFlag::Echo)),
            Pty::ECHOE => out.flags.push(flag(ModeFlag::Echoe)),
            Pty::ECHOK => out.flags.push(flag(ModeFlag::Echok)),
            Pty::OPOST => out.flags.push(flag(ModeFlag::Opost)),
            Pty::ONLCR => out.flags.push(flag(ModeFlag::Onlcr)),
            _ => {}
        }
    }
    out
}
