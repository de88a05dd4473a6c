//! What state a server line is in, from two separate facts: what the configuration says
//! (`drain`, `down`) and what an operator set at run time (the control actions).
//!
//! The rule, in words (the README's "Operations" and docs/architecture.md say the same):
//!
//! - A runtime mark overrides the configuration until it is cleared: `undrain` undoes the
//!   configuration's `drain`, `drain` drains a server the configuration does not drain.
//! - `down` in the configuration cannot be overridden at run time (nginx's own parameter: the
//!   balancing methods skip the server whatever this module says); `up` on such a server is
//!   refused, so the operator is told to change the configuration.
//! - A reload that changes what the configuration says of a server line (it adds or removes
//!   `drain`, or `down`) clears that line's runtime mark of the same kind: the new
//!   configuration applies at once. A reload that leaves it alone keeps the runtime mark.
//!   Likewise a runtime weight is dropped when the configured weight changes, or when the
//!   upstream no longer takes runtime weights (no `zone`, or a method that reads weights only
//!   when its peers change).

/// Runtime mark: the server drains (new sessions and fallback traffic avoid it).
pub const RT_DRAIN: u64 = 1;
/// Runtime mark: no request goes to the server.
pub const RT_DOWN: u64 = 2;
/// Runtime mark: the server does not drain, whatever the configuration says.
pub const RT_UNDRAIN: u64 = 4;

/// What the configuration says of a server line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Configured {
    /// `drain`.
    pub drain: bool,
    /// `down`.
    pub down: bool,
}

/// Configuration flags as kept in the zone (so that a reload can compare them).
const CONF_DRAIN: u64 = 1;
const CONF_DOWN: u64 = 2;
/// The upstream takes runtime weights (a zone, and a method that reads weights per request).
pub const CONF_WEIGHTS: u64 = 4;

impl Configured {
    /// The flags word kept in the zone, with `weights` telling whether the upstream takes
    /// runtime weights.
    pub fn to_word(self, weights: bool) -> u64 {
        let flag = |on: bool, bit: u64| if on { bit } else { 0 };
        flag(self.drain, CONF_DRAIN) | flag(self.down, CONF_DOWN) | flag(weights, CONF_WEIGHTS)
    }

    /// The flags of a zone word.
    pub fn from_word(word: u64) -> Configured {
        Configured { drain: word & CONF_DRAIN != 0, down: word & CONF_DOWN != 0 }
    }
}

/// The state a server line is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Takes its sessions, new sessions and fallback traffic.
    Up,
    /// Takes its sessions only.
    Draining,
    /// Takes nothing.
    Down,
}

impl State {
    /// The word the status page uses, in every format.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Draining => "draining",
            State::Down => "down",
        }
    }
}

/// The state of a server line from its configuration and its runtime marks.
pub fn effective(configured: Configured, runtime: u64) -> State {
    if configured.down || runtime & RT_DOWN != 0 {
        State::Down
    } else if runtime & RT_DRAIN != 0 || (configured.drain && runtime & RT_UNDRAIN == 0) {
        State::Draining
    } else {
        State::Up
    }
}

/// A control action on the marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `drain`.
    Drain,
    /// `undrain`.
    Undrain,
    /// `down`.
    Down,
    /// `up`.
    Up,
}

/// Why an action cannot be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `up` on a server that is `down` in the configuration.
    DownInConfiguration,
}

/// The runtime marks to set and to clear for `action` on a server line configured so: a mark
/// is kept only where it differs from the configuration.
pub fn change(configured: Configured, action: Action) -> Result<(u64, u64), Refusal> {
    Ok(match action {
        Action::Drain if configured.drain => (0, RT_UNDRAIN),
        Action::Drain => (RT_DRAIN, RT_UNDRAIN),
        Action::Undrain if configured.drain => (RT_UNDRAIN, RT_DRAIN),
        Action::Undrain => (0, RT_DRAIN | RT_UNDRAIN),
        Action::Down => (RT_DOWN, 0),
        Action::Up if configured.down => return Err(Refusal::DownInConfiguration),
        Action::Up => (0, RT_DOWN),
    })
}

/// The runtime marks a reload keeps, given what the configuration said before (`old`) and
/// says now (`new`): a mark whose kind the configuration changed is cleared.
pub fn carried(old: Configured, new: Configured, runtime: u64) -> u64 {
    let mut kept = runtime & (RT_DRAIN | RT_DOWN | RT_UNDRAIN);
    if old.drain != new.drain {
        kept &= !(RT_DRAIN | RT_UNDRAIN);
    }
    if old.down != new.down {
        kept &= !RT_DOWN;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLAIN: Configured = Configured { drain: false, down: false };
    const DRAINED: Configured = Configured { drain: true, down: false };
    const DOWN: Configured = Configured { drain: false, down: true };

    fn apply(configured: Configured, runtime: u64, action: Action) -> u64 {
        let (set, clear) = change(configured, action).expect("allowed");
        (runtime | set) & !clear
    }

    #[test]
    fn the_configuration_applies_until_an_operator_overrides_it() {
        assert_eq!(effective(PLAIN, 0), State::Up);
        assert_eq!(effective(DRAINED, 0), State::Draining);
        assert_eq!(effective(DOWN, 0), State::Down);
        let undrained = apply(DRAINED, 0, Action::Undrain);
        assert_eq!(effective(DRAINED, undrained), State::Up);
        assert_eq!(effective(DRAINED, apply(DRAINED, undrained, Action::Drain)), State::Draining);
        assert_eq!(effective(PLAIN, apply(PLAIN, 0, Action::Drain)), State::Draining);
        assert_eq!(change(DOWN, Action::Up), Err(Refusal::DownInConfiguration));
        assert_eq!(effective(DRAINED, apply(DRAINED, 0, Action::Down)), State::Down);
    }

    #[test]
    fn marks_equal_to_the_configuration_are_not_kept() {
        assert_eq!(apply(DRAINED, 0, Action::Drain), 0);
        assert_eq!(apply(PLAIN, 0, Action::Undrain), 0);
        assert_eq!(apply(PLAIN, apply(PLAIN, 0, Action::Drain), Action::Undrain), 0);
    }

    #[test]
    fn a_reload_that_changes_the_configuration_applies_it_at_once() {
        // `drain` removed from the configuration: the server is up after the reload.
        assert_eq!(effective(PLAIN, carried(DRAINED, PLAIN, 0)), State::Up);
        // An operator's undrain of a server drained in the configuration survives a reload
        // that leaves the line alone.
        let undrained = apply(DRAINED, 0, Action::Undrain);
        assert_eq!(effective(DRAINED, carried(DRAINED, DRAINED, undrained)), State::Up);
        // ... and `drain` added to the configuration wins over an earlier runtime undrain.
        assert_eq!(effective(DRAINED, carried(PLAIN, DRAINED, undrained)), State::Draining);
        // A runtime down is kept across a reload that changes only the drain.
        let down = apply(PLAIN, 0, Action::Down);
        assert_eq!(effective(DRAINED, carried(PLAIN, DRAINED, down)), State::Down);
    }

    fn configured() -> impl Strategy<Value = Configured> {
        (any::<bool>(), any::<bool>()).prop_map(|(drain, down)| Configured { drain, down })
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Drain),
            Just(Action::Undrain),
            Just(Action::Down),
            Just(Action::Up)
        ]
    }

    proptest! {
        #[test]
        fn every_action_does_what_it_says(c in configured(), runtime in 0u64..8, a in action()) {
            // Drain and undrain are never both set (checked below for every action).
            prop_assume!(runtime & (RT_DRAIN | RT_UNDRAIN) != RT_DRAIN | RT_UNDRAIN);
            let Ok((set, clear)) = change(c, a) else {
                prop_assert!(c.down && a == Action::Up);
                return Ok(());
            };
            let after = (runtime | set) & !clear;
            let state = effective(c, after);
            match a {
                Action::Down => prop_assert_eq!(state, State::Down),
                Action::Up => prop_assert_ne!(state, State::Down),
                Action::Drain | Action::Undrain if effective(c, runtime) == State::Down => {
                    prop_assert_eq!(state, State::Down)
                }
                Action::Drain => prop_assert_eq!(state, State::Draining),
                Action::Undrain => prop_assert_eq!(state, State::Up),
            }
            // Drain and undrain never both kept.
            prop_assert!(after & RT_DRAIN == 0 || after & RT_UNDRAIN == 0);
        }

        #[test]
        fn an_unchanged_configuration_keeps_every_mark(c in configured(), runtime in 0u64..8) {
            prop_assert_eq!(carried(c, c, runtime), runtime);
        }

        #[test]
        fn a_changed_configuration_is_in_force_after_the_reload(
            old in configured(), new in configured(), runtime in 0u64..8,
        ) {
            let kept = carried(old, new, runtime);
            if old.drain != new.drain && !new.down && kept & RT_DOWN == 0 {
                let expected = if new.drain { State::Draining } else { State::Up };
                prop_assert_eq!(effective(new, kept), expected);
            }
        }

        #[test]
        fn flags_round_trip(c in configured(), weights in any::<bool>()) {
            prop_assert_eq!(Configured::from_word(c.to_word(weights)), c);
            prop_assert_eq!(c.to_word(weights) & CONF_WEIGHTS != 0, weights);
        }
    }
}
