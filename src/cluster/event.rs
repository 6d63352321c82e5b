//! A room event as the Lua scripts publish and log it: twelve fields
//! joined by `\n` (room names hold no control characters and serde_json
//! never writes a raw newline). Pure: parsing only, unit-tested.

use std::fmt;

/// Where an event stands in its room: a chat message raises `seq` (the
/// protocol's gap-free number), every other event raises `k`. From `(s, k)`
/// the next event is `(s + 1, k)` or `(s, k + 1)`; anything else is a gap,
/// or, if not above, a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub(crate) seq: u64,
    pub(crate) k: u64,
}

impl Pos {
    /// The position an event of `kind` must have to come right after this one.
    pub(crate) fn next(self, kind: Kind) -> Pos {
        match kind {
            Kind::Chat => Pos {
                seq: self.seq + 1,
                k: self.k,
            },
            _ => Pos {
                seq: self.seq,
                k: self.k + 1,
            },
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.seq, self.k)
    }
}

/// What happened. Joins come in two forms: the one every node with members
/// in the room gets, and the joiner's own node's copy (`own`), which
/// carries the snapshot (`users`, `history`) for its `joined`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `m`: a chat message; `data` is the chatMessage data.
    Chat,
    /// `t`: typing; `data` is the typing data.
    Typing,
    /// `j`/`J`: a member joined; `data` is its presence.
    Join,
    /// `r`/`R`: a member rejoined under a new name; `data` the new
    /// presence, `old` the old one.
    Rename,
    /// `n`/`N`: a member rejoined under the same name: nothing for others.
    Rejoin,
    /// `l`: leaveRoom, answered with `left`.
    Leave,
    /// `s`: a silent leave (switch, disconnect, eviction, reaping).
    Gone,
}

/// One event, borrowing from the message it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    pub(crate) kind: Kind,
    /// True for a join's copy for the joiner's own node (`J`, `R`, `N`).
    pub(crate) own: bool,
    pub(crate) room: &'a str,
    /// The room's incarnation: another epoch is another room.
    pub(crate) epoch: &'a str,
    pub(crate) pos: Pos,
    /// The connection id the event is about, as on the wire (`<node>-<n>`).
    pub(crate) origin: &'a str,
    /// The origin's request number (its reader waits for it), 0 for none.
    pub(crate) q: u64,
    /// The `ack` the origin's request carried.
    pub(crate) ack: Option<u64>,
    pub(crate) data: &'a str,
    pub(crate) old: &'a str,
    /// `joined.users` as a JSON array (own joins only).
    pub(crate) users: &'a str,
    /// `joined.history` as a JSON array (own joins only).
    pub(crate) history: &'a str,
}

/// A message that is not an event: a bug, or something else on our channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl<'a> Event<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Event<'a>, Malformed> {
        let mut f = text.splitn(12, '\n');
        let mut field = |name| f.next().ok_or(Malformed(name));
        let (kind, own) = match field("kind")? {
            "m" => (Kind::Chat, false),
            "t" => (Kind::Typing, false),
            "j" => (Kind::Join, false),
            "J" => (Kind::Join, true),
            "r" => (Kind::Rename, false),
            "R" => (Kind::Rename, true),
            "n" => (Kind::Rejoin, false),
            "N" => (Kind::Rejoin, true),
            "l" => (Kind::Leave, false),
            "s" => (Kind::Gone, false),
            _ => return Err(Malformed("kind")),
        };
        let room = field("room")?;
        let epoch = field("epoch")?;
        let seq = number(field("seq")?).ok_or(Malformed("seq"))?;
        let k = number(field("k")?).ok_or(Malformed("k"))?;
        let origin = field("origin")?;
        let q = match field("q")? {
            "" => 0,
            q => number(q).ok_or(Malformed("q"))?,
        };
        let ack = match field("ack")? {
            "" => None,
            ack => Some(number(ack).ok_or(Malformed("ack"))?),
        };
        Ok(Event {
            kind,
            own,
            room,
            epoch,
            pos: Pos { seq, k },
            origin,
            q,
            ack,
            data: field("data")?,
            old: field("old")?,
            users: field("users")?,
            history: field("history")?,
        })
    }
}

fn number(text: &str) -> Option<u64> {
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_event_parses() {
        let text = "m\nlobby\nab12\n7\n3\nk3v9-42\n5\n9\n{\"seq\":7}\n\n\n";
        let ev = Event::parse(text).unwrap();
        assert_eq!(
            (ev.kind, ev.own, ev.room, ev.epoch),
            (Kind::Chat, false, "lobby", "ab12")
        );
        assert_eq!(ev.pos, Pos { seq: 7, k: 3 });
        assert_eq!((ev.origin, ev.q, ev.ack), ("k3v9-42", 5, Some(9)));
        assert_eq!(ev.data, "{\"seq\":7}");
        assert_eq!((ev.old, ev.users, ev.history), ("", "", ""));
    }

    #[test]
    fn own_joins_carry_their_snapshot_and_no_ack_is_none() {
        let text = "J\nr\ne\n0\n1\nx-1\n1\n\n{}\n\n[{\"id\":\"x-1\"}]\n[]";
        let ev = Event::parse(text).unwrap();
        assert!(ev.own && ev.kind == Kind::Join && ev.ack.is_none());
        assert_eq!((ev.users, ev.history), ("[{\"id\":\"x-1\"}]", "[]"));
    }

    #[test]
    fn broken_events_are_refused() {
        assert_eq!(Event::parse("x\n"), Err(Malformed("kind")));
        assert_eq!(Event::parse("m\nr\ne\nnope"), Err(Malformed("seq")));
        assert_eq!(
            Event::parse("m\nr\ne\n1\n2\no\n3\n4\nd"),
            Err(Malformed("old"))
        );
    }

    #[test]
    fn positions_follow_the_kind() {
        let p = Pos { seq: 4, k: 9 };
        assert_eq!(p.next(Kind::Chat), Pos { seq: 5, k: 9 });
        assert_eq!(p.next(Kind::Gone), Pos { seq: 4, k: 10 });
        assert!(Pos { seq: 5, k: 0 } > p && Pos { seq: 4, k: 10 } > p);
    }
}
