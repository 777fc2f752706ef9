//! [`Memo`]: a value derived from the member's state, kept so a pass does not derive it again
//! while what it derives from is unchanged (issue 10: a pass per input must not cost the size
//! of the group each time).

use std::fmt;

/// A value computed from state identified by `K` (typically the view's sequence number with
/// what else the computation reads). Invisible to `Debug`: the model checker fingerprints a
/// member by its `Debug` rendering, and a cache of derived values is not state.
#[derive(Clone)]
pub(super) struct Memo<K, V>(Option<(K, V)>);

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo(None)
    }
}

impl<K: PartialEq, V> Memo<K, V> {
    /// Whether the value for `key` is kept.
    pub(super) fn holds(&self, key: &K) -> bool {
        self.0.as_ref().is_some_and(|(k, _)| k == key)
    }

    /// The value for `key`, taken out; `None` when another key's value (or none) is kept.
    pub(super) fn take(&mut self, key: &K) -> Option<V> {
        if self.holds(key) {
            self.0.take().map(|(_, v)| v)
        } else {
            None
        }
    }

    pub(super) fn set(&mut self, key: K, value: V) {
        self.0 = Some((key, value));
    }
}

impl<K, V> fmt::Debug for Memo<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memo")
    }
}

/// Bookkeeping that only makes a pass cheaper and never changes what it does: invisible to
/// `Debug`, like [`Memo`], for the same reason.
#[derive(Clone, Default)]
pub(super) struct Unseen<T>(pub(super) T);

impl<T> std::ops::Deref for Unseen<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Unseen<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> fmt::Debug for Unseen<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Unseen")
    }
}
