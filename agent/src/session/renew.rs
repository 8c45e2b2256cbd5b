//! Certificate renewal over the live connection.
//!
//! At two thirds of the time its certificate had left when the agent loaded (or last renewed)
//! it, the agent sends `Renew` with a CSR made with its current key on the control stream of
//! its authenticated connection. The server answers `Renewed`; the new certificate replaces
//! the file (temporary file and rename) and the client configuration, so the *next*
//! connection presents it, while the live connection and the commands on it carry on. A
//! refusal or a missing answer is retried with backoff and logged with the time left.

use std::path::PathBuf;
use std::time::Duration;

use ferry_protocol::pki;
use ferry_protocol::{AgentId, EnrollRefused, Message, Renew, Renewed};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::session::backoff::Backoff;

/// How long to wait for the server's answer before asking again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// When and how this agent renews its certificate.
pub(crate) struct Renewal {
    id: AgentId,
    cert: PathBuf,
    key: PathBuf,
    not_after: OffsetDateTime,
    due: Instant,
    backoff: Backoff,
}

fn until(not_after: OffsetDateTime) -> Duration {
    Duration::try_from(not_after - OffsetDateTime::now_utc()).unwrap_or_default()
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl Renewal {
    /// Reads the certificate's expiry; `None` if it cannot be read.
    pub(crate) fn load(id: AgentId, cert: PathBuf, key: PathBuf) -> Option<Renewal> {
        let pem = std::fs::read_to_string(&cert).ok()?;
        let not_after = pki::first_cert_der(&pem)
            .and_then(|der| pki::cert_not_after(&der))
            .ok()?;
        let mut renewal = Renewal {
            id,
            cert,
            key,
            not_after,
            due: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(300)),
        };
        renewal.schedule();
        Some(renewal)
    }

    fn schedule(&mut self) {
        let left = until(self.not_after);
        if left.is_zero() {
            tracing::error!(
                agent = %self.id,
                "this agent's certificate expired at {}: the server will refuse it; enroll again (`ferry agent --join`) with a new join token",
                self.not_after
            );
        }
        self.due = Instant::now() + left.mul_f64(2.0 / 3.0);
    }

    /// When to send the next request.
    pub(crate) fn due(&self) -> Instant {
        self.due
    }

    /// The request to send now; the next one is due if no answer comes in time.
    pub(crate) fn request(&mut self) -> Option<Message> {
        self.due = Instant::now()
            + ANSWER_TIMEOUT
                .min(until(self.not_after) / 4)
                .max(Duration::from_millis(500));
        let csr = std::fs::read_to_string(&self.key)
            .map_err(|e| format!("cannot read {}: {e}", self.key.display()))
            .and_then(|key| pki::agent_csr(&key, &self.id).map_err(|e| e.to_string()));
        match csr {
            Ok(csr) => {
                tracing::info!(agent = %self.id, expires_in = %human(until(self.not_after)), "renewing this agent's certificate");
                Some(Message::Renew(Renew { csr }))
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// The server renewed the certificate: keep it; returns true when the file changed.
    pub(crate) fn renewed(&mut self, renewed: Renewed) -> bool {
        let check = pki::first_cert_der(&renewed.certificate_pem)
            .map_err(|e| e.to_string())
            .and_then(|der| {
                let not_after = pki::cert_not_after(&der).map_err(|e| e.to_string())?;
                let key = std::fs::read_to_string(&self.key).map_err(|e| e.to_string())?;
                if pki::cert_public_key(&der).map_err(|e| e.to_string())?
                    != pki::key_public_key(&key).map_err(|e| e.to_string())?
                {
                    return Err("the renewed certificate is not for this agent's key".into());
                }
                Ok(not_after)
            });
        let not_after = match check {
            Ok(not_after) => not_after,
            Err(e) => {
                self.failed(&format!("the server's answer cannot be used: {e}"));
                return false;
            }
        };
        if let Err(e) = pki::write_file(&self.cert, renewed.certificate_pem.as_bytes(), false) {
            self.failed(&e.to_string());
            return false;
        }
        self.not_after = not_after;
        self.backoff.reset();
        self.schedule();
        tracing::info!(agent = %self.id, %not_after, "certificate renewed");
        true
    }

    /// The server refused the renewal.
    pub(crate) fn refused(&mut self, refused: EnrollRefused) {
        self.failed(&format!("refused by the server: {}", refused.message));
    }

    fn failed(&mut self, why: &str) {
        let left = until(self.not_after);
        let retry = self
            .backoff
            .next_delay()
            .min(left / 2)
            .max(Duration::from_millis(200));
        self.due = Instant::now() + retry;
        tracing::warn!(
            agent = %self.id,
            retry_in = %human(retry),
            expires_in = %human(left),
            "certificate renewal failed: {why}"
        );
    }
}
