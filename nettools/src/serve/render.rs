//! One render shared by concurrent scrapes: the first scrape starts a render on a blocking
//! thread; scrapes that arrive while it runs wait for the same result instead of starting their
//! own. A burst of scrapes costs one render, one lock hold and one buffer (the responses share
//! it), however many there are.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

use super::core::{self, Core};

/// A rendered exposition, or why there is none (one sentence).
pub type Rendered = Result<Bytes, String>;

/// The render in flight, if any.
#[derive(Default)]
pub struct Shared {
    inflight: Mutex<Option<watch::Receiver<Option<Rendered>>>>,
}

/// Clears the in-flight slot when the render ends, however it ends, so the next scrape starts
/// a new one.
struct Done<'a>(&'a Shared);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        *self
            .0
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Shared {
    /// The exposition: the render in flight, or a new one.
    pub async fn get(self: &Arc<Self>, core: &Arc<Mutex<Core>>) -> Rendered {
        let mut rx = {
            let mut slot = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.as_ref() {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *slot = Some(rx.clone());
                    let shared = self.clone();
                    let core = core.clone();
                    tokio::task::spawn_blocking(move || {
                        let done = Done(&shared);
                        let result = core::render(&core).map(Bytes::from).map_err(|e| {
                            log::warn!("scrape failed: {e:#}");
                            format!("{e:#}")
                        });
                        // Scrapes from now on start a new render; those waiting get this one.
                        drop(done);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(|| Err("no render".to_string())),
            Err(_) => Err("the render ended without a result".to_string()),
        }
    }
}
