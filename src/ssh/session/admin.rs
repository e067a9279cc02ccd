//! `ssh host admin …`: the operator's views for users named in `[admin] users` or `groups`,
//! from their own session, without the admin socket. `admin` (with a terminal) opens the
//! sessions console; `admin sessions` prints its JSON; `admin end ID` and `admin watch ID` do
//! what the console's keys do. Every use, allowed or refused, is audited.

use super::*;
use crate::ops::admin::{answer, watch_into, watchable};
use crate::tui::admin::{Console, ConsoleAction, SessionRow};

const USAGE: &str = "hermes-ssh-gateway: admin: use `ssh -t host admin` (the sessions console), `ssh host admin sessions` (JSON), `admin end ID` or `ssh -t host admin watch ID`";

/// Ctrl-]: leaves a watch, as in the local console.
const CTRL_BRACKET: u8 = 0x1d;

impl Job {
    /// Checks that `identity` is an operator, audits the request, then serves it.
    pub(super) async fn admin(mut self, identity: Identity, args: Vec<String>) {
        let command = if args.is_empty() {
            "console".to_owned()
        } else {
            args.join(" ")
        };
        let verdict = self.ctx.admin.operators.admit(&identity);
        self.ctx.ops.emit(Event::Admin {
            user: identity.user_id.clone(),
            remote: self.remote,
            command: command.clone(),
            refused: verdict.as_ref().err().cloned(),
        });
        if let Err(why) = verdict {
            tracing::warn!(user = %identity.user_id, command, "refused: admin: {why}");
            return self
                .refuse(&format!("hermes-ssh-gateway: admin: {why}"))
                .await;
        }
        tracing::info!(user = %identity.user_id, command, "operator by identity");
        let actor = Actor::Admin(identity.user_id.clone());
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words.as_slice() {
            [] if self.pty.is_some() => self.console(&actor).await,
            [] => {
                self.refuse("hermes-ssh-gateway: admin: the console needs a terminal: ssh -t host admin (or ssh host admin sessions for JSON)")
                    .await
            }
            ["sessions"] => {
                let list = answer(&self.ctx.admin.state, "list", &actor).await;
                self.print(format!("{list}\n")).await;
                finish(&self.writer, 0).await;
            }
            ["end", id] => {
                let said = answer(&self.ctx.admin.state, &format!("end {id}"), &actor).await;
                self.print(format!("{said}\n")).await;
                finish(&self.writer, 0).await;
            }
            ["watch", id] => match watchable(&self.ctx.admin.state, id) {
                Ok(session) => {
                    self.watch_as(&session, &actor).await;
                    finish(&self.writer, 0).await;
                }
                Err(why) => self.refuse(&format!("hermes-ssh-gateway: admin: {why}")).await,
            },
            _ => self.refuse(USAGE).await,
        }
    }

    async fn rows(&self) -> Vec<SessionRow> {
        let list = self.ctx.admin.state.sessions.list_all().await;
        list.into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    fn frame(&self, console: &Console) -> Bytes {
        let initial = self.pty.as_ref().map(|p| p.size).unwrap_or_default();
        let size = current_size(&self.resize).unwrap_or(initial);
        Bytes::from(console.render(size.cols, size.rows))
    }

    /// The sessions console, refreshed every second and on each key, until `q`.
    async fn console(mut self, actor: &Actor) {
        let mut console = Console::new(self.rows().await);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let _ = self.writer.data_bytes(self.frame(&console)).await;
            let action = tokio::select! {
                _ = tick.tick() => None,
                data = self.input.recv() => match data {
                    Some(d) => console.key(&d),
                    None => Some(ConsoleAction::Quit),
                },
                _ = self.closed.cancelled() => Some(ConsoleAction::Quit),
            };
            match action {
                None => {}
                Some(ConsoleAction::Quit) => break,
                Some(ConsoleAction::End(id)) => {
                    console.status = self.end_from_console(id, actor).await;
                }
                Some(ConsoleAction::Watch(id)) => {
                    console.status = match watchable(&self.ctx.admin.state, &id.to_string()) {
                        Ok(session) => {
                            let _ = self
                                .writer
                                .data_bytes(Bytes::from_static(b"\x1b[2J\x1b[H"))
                                .await;
                            self.watch_as(&session, actor).await;
                            format!("stopped watching session {id} of {}", session.user)
                        }
                        Err(why) => format!("error: {why}"),
                    };
                }
            }
            console.set_rows(self.rows().await);
        }
        let _ = self
            .writer
            .data_bytes(Bytes::from_static(crate::tui::picker::LEAVE))
            .await;
        finish(&self.writer, 0).await;
    }

    async fn end_from_console(&self, id: u64, actor: &Actor) -> String {
        let Actor::Admin(user) = actor else {
            return String::new();
        };
        self.ctx.ops.emit(Event::Admin {
            user: user.clone(),
            remote: self.remote,
            command: format!("end {id}"),
            refused: None,
        });
        let said = answer(&self.ctx.admin.state, &format!("end {id}"), actor).await;
        match serde_json::from_str::<serde_json::Value>(&said) {
            Ok(v) if v["ended"] == true => format!("ended session {id}"),
            Ok(v) if v["ended"] == false => format!("session {id} is already gone"),
            _ => format!("error: {said}"),
        }
    }

    /// Watches `session` read-only on this channel until `q` or Ctrl-], the session's end, or
    /// the client's leaving; the terminal modes the program set are reset afterwards.
    async fn watch_as(&mut self, session: &Arc<Running>, actor: &Actor) {
        let sink: crate::sessions::Sink = Box::new(self.writer.make_writer());
        let input = &mut self.input;
        let closed = self.closed.clone();
        let left = async move {
            loop {
                tokio::select! {
                    data = input.recv() => match data {
                        Some(d) if d.iter().any(|&b| b == b'q' || b == CTRL_BRACKET) => return,
                        Some(_) => {}
                        None => return,
                    },
                    _ = closed.cancelled() => return,
                }
            }
        };
        let who = (actor.clone(), self.remote);
        watch_into(&self.ctx.admin.state, session, sink, who, left).await;
        let _ = self
            .writer
            .data_bytes(Bytes::from_static(crate::tui::admin::RESET_MODES))
            .await;
    }
}
