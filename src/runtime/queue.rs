//! A deduplicating work queue: a key is queued at most once, never processed
//! by two workers at once, and re-queued if it was added while in progress.
//! This is what makes the reconciler level-triggered: any number of events
//! for a pod collapse into one more pass over its whole state.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    order: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    dirty: HashSet<String>,
}

/// See the module docs.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
    idle: Notify,
}

impl WorkQueue {
    /// Queues `key` (no-op if already queued).
    pub fn add(&self, key: &str) {
        let mut s = self.state.lock().unwrap();
        if s.active.contains(key) {
            s.dirty.insert(key.to_string());
        } else if s.queued.insert(key.to_string()) {
            s.order.push_back(key.to_string());
            self.ready.notify_one();
        }
    }

    /// Waits for the next key and marks it active.
    pub async fn next(&self) -> String {
        loop {
            {
                let mut s = self.state.lock().unwrap();
                if let Some(k) = s.order.pop_front() {
                    s.queued.remove(&k);
                    s.active.insert(k.clone());
                    if !s.order.is_empty() {
                        self.ready.notify_one();
                    }
                    return k;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Marks `key` finished; re-queues it if it was added meanwhile.
    pub fn done(&self, key: &str) {
        let mut s = self.state.lock().unwrap();
        s.active.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.to_string()) {
            s.order.push_back(key.to_string());
            self.ready.notify_one();
        }
        if s.order.is_empty() && s.active.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Waits until nothing is queued or in progress.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            {
                let s = self.state.lock().unwrap();
                if s.order.is_empty() && s.active.is_empty() {
                    return;
                }
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_requeues_dirty_keys() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        let k = q.next().await;
        assert_eq!(k, "a");
        q.add("a"); // while active: marked dirty
        assert_eq!(q.next().await, "b");
        q.done("b");
        q.done("a");
        assert_eq!(q.next().await, "a");
        q.done("a");
        q.wait_idle().await;
    }
}
