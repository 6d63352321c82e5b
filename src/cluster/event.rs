//! A room event as the Lua scripts publish and log it: fields, not event
//! JSON. A node turns them into the protocol's events through the same
//! builders as the single-node registry (`protocol::ServerEvent`), so the
//! two engines cannot disagree on a shape.
//!
//! Thirteen fields joined by `\n`; lists inside a field are joined by `\t`.
//! A member travels as its username, a JSON string, followed, for a
//! verified user (v3), by a space and its `sub` as a JSON string (see
//! [`member_field`]): whatever a node shows of a member, every node shows.
//! Neither character can occur inside a field: room names and usernames
//! hold no control characters, and the values that can (usernames, a chat
//! text) travel as JSON strings, which serde_json writes without raw
//! control characters. Pure: parsing only, unit-tested.

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

/// One event, borrowing from the message it was read from. The fields
/// after `ack`: `name` the origin's username (a JSON string) in every
/// event; `body` per kind: a chat message's `<ts>\t<text as JSON>` (see
/// [`chat_body`]), typing's `true`/`false`, a rename's old name (JSON);
/// and for an own join the snapshot: `users` (`<id>\t<name>` pairs, in
/// join order, flattened), `resumed` (`1`, `0`, or empty for a join without
/// `since`) and `history` (chat records, one a line, see [`ChatRecord`]):
/// with `resumed` 1, only those after the `since`.
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
    pub(crate) name: &'a str,
    pub(crate) body: &'a str,
    pub(crate) users: &'a str,
    /// An own join's `joined.resumed`: None for a join without `since`.
    pub(crate) resumed: Option<bool>,
    pub(crate) history: &'a str,
}

/// One entry of an own join's `users`: id, username, verified user.
pub(crate) type Listed<'a> = (&'a str, String, Option<String>);

/// A message that is not an event: a bug, or something else on our channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl<'a> Event<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Event<'a>, Malformed> {
        let mut f = text.splitn(13, '\n');
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
            name: field("name")?,
            body: field("body")?,
            users: field("users")?,
            resumed: match field("resumed")? {
                "" => None,
                "1" => Some(true),
                "0" => Some(false),
                _ => return Err(Malformed("resumed")),
            },
            history: field("history")?,
        })
    }

    /// The origin's username and verified user, if any.
    pub(crate) fn member(&self) -> Result<(String, Option<String>), Malformed> {
        member_parts(self.name).ok_or(Malformed("name"))
    }

    /// A chat message's record: its `seq`, origin, name, `ts` and text.
    pub(crate) fn chat(&self) -> Result<ChatRecord<'a>, Malformed> {
        let (ts, text) = self.body.split_once('\t').ok_or(Malformed("body"))?;
        Ok(ChatRecord {
            seq: self.pos.seq,
            id: self.origin,
            name: self.name,
            ts: number(ts).ok_or(Malformed("body"))?,
            text,
        })
    }

    /// Typing's flag.
    pub(crate) fn typing(&self) -> Result<bool, Malformed> {
        match self.body {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Malformed("body")),
        }
    }

    /// A rename's old username.
    pub(crate) fn old_username(&self) -> Result<String, Malformed> {
        member_parts(self.body)
            .map(|(name, _)| name)
            .ok_or(Malformed("body"))
    }

    /// An own join's `users`: (id, username, user) in join order.
    pub(crate) fn users(&self) -> Result<Vec<Listed<'a>>, Malformed> {
        let mut fields = self.users.split('\t').filter(|f| !f.is_empty());
        let mut users = Vec::new();
        while let Some(id) = fields.next() {
            let member = fields.next().and_then(member_parts);
            let (name, user) = member.ok_or(Malformed("users"))?;
            users.push((id, name, user));
        }
        Ok(users)
    }

    /// An own join's `history`: the room's last chat messages, oldest first.
    pub(crate) fn history(&self) -> Result<Vec<ChatRecord<'a>>, Malformed> {
        let lines = self.history.split('\n').filter(|l| !l.is_empty());
        lines.map(ChatRecord::parse).collect()
    }
}

/// What the history list in Redis keeps of a chat message:
/// `<seq>\t<id>\t<name>\t<ts>\t<text>`, name and text as JSON strings.
/// The chat script appends `<seq>\t<id>\t<name>\t` to the body it is
/// handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatRecord<'a> {
    pub(crate) seq: u64,
    pub(crate) id: &'a str,
    /// The username as a JSON string.
    pub(crate) name: &'a str,
    pub(crate) ts: u64,
    /// The text as a JSON string.
    pub(crate) text: &'a str,
}

impl<'a> ChatRecord<'a> {
    fn parse(line: &'a str) -> Result<ChatRecord<'a>, Malformed> {
        let mut f = line.splitn(5, '\t');
        let mut field = || f.next().ok_or(Malformed("history"));
        Ok(ChatRecord {
            seq: number(field()?).ok_or(Malformed("history"))?,
            id: field()?,
            name: field()?,
            ts: number(field()?).ok_or(Malformed("history"))?,
            text: field()?,
        })
    }

    /// The username and the text, decoded.
    pub(crate) fn strings(&self) -> Result<(String, String), Malformed> {
        let (name, _) = member_parts(self.name).ok_or(Malformed("name"))?;
        let text = json_text(self.text).ok_or(Malformed("text"))?;
        Ok((name, text))
    }

    /// The verified user who wrote it, if any.
    pub(crate) fn user(&self) -> Result<Option<String>, Malformed> {
        let (_, user) = member_parts(self.name).ok_or(Malformed("name"))?;
        Ok(user)
    }
}

/// A chat message's `body` as the chat script is handed it.
pub(crate) fn chat_body(ts: u64, text: &str) -> String {
    format!("{ts}\t{}", json_string(text))
}

/// A string as JSON: how names and texts travel through Redis.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// A member as Redis keeps it (in a room's users, an event's `name`, a
/// history record): `"ann"`, or `"ann" "u-17"` for a verified user. Two
/// JSON strings cannot be confused with one: each ends at its unescaped
/// closing quote.
pub(crate) fn member_field(username: &str, user: Option<&str>) -> String {
    match user {
        None => json_string(username),
        Some(user) => format!("{} {}", json_string(username), json_string(user)),
    }
}

/// A [`member_field`] read back: the username and the user, if any.
fn member_parts(field: &str) -> Option<(String, Option<String>)> {
    let mut strings = serde_json::Deserializer::from_str(field).into_iter::<String>();
    let name = strings.next()?.ok()?;
    let user = strings.next().transpose().ok()?;
    strings.next().is_none().then_some((name, user))
}

/// The string a JSON string holds.
fn json_text(json: &str) -> Option<String> {
    serde_json::from_str(json).ok()
}

fn number(text: &str) -> Option<u64> {
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_event_parses() {
        let text = "m\nlobby\nab12\n7\n3\nk3v9-42\n5\n9\n\"ann\"\n12\t\"hi\\n\"\n\n\n";
        let ev = Event::parse(text).unwrap();
        assert_eq!(
            (ev.kind, ev.own, ev.room, ev.epoch),
            (Kind::Chat, false, "lobby", "ab12")
        );
        assert_eq!(ev.pos, Pos { seq: 7, k: 3 });
        assert_eq!((ev.origin, ev.q, ev.ack), ("k3v9-42", 5, Some(9)));
        assert_eq!(ev.member().unwrap(), ("ann".to_owned(), None));
        let chat = ev.chat().unwrap();
        assert_eq!((chat.seq, chat.id, chat.ts), (7, "k3v9-42", 12));
        assert_eq!(chat.strings().unwrap(), ("ann".into(), "hi\n".into()));
        assert_eq!((ev.users, ev.resumed, ev.history), ("", None, ""));
    }

    #[test]
    fn own_joins_carry_their_snapshot_and_no_ack_is_none() {
        let history = format!(
            "1\tw-2\t\"bo\"\t5\t{}\n2\tx-1\t\"cy\"\t6\t\"b\"",
            json_string("a\tb")
        );
        let text =
            format!("J\nr\ne\n2\n1\nx-1\n1\n\n\"cy\"\n\nw-2\t\"bo\"\tx-1\t\"cy\"\n1\n{history}");
        let ev = Event::parse(&text).unwrap();
        assert!(ev.own && ev.kind == Kind::Join && ev.ack.is_none());
        assert_eq!(ev.resumed, Some(true));
        assert_eq!(
            ev.users().unwrap(),
            [
                ("w-2", "bo".to_owned(), None),
                ("x-1", "cy".to_owned(), None)
            ]
        );
        let history = ev.history().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            (history[0].seq, history[0].id, history[0].ts),
            (1, "w-2", 5)
        );
        assert_eq!(history[0].strings().unwrap().1, "a\tb");
        assert_eq!(history[1].strings().unwrap(), ("cy".into(), "b".into()));
    }

    #[test]
    fn broken_events_are_refused() {
        assert_eq!(Event::parse("x\n"), Err(Malformed("kind")));
        assert_eq!(Event::parse("m\nr\ne\nnope"), Err(Malformed("seq")));
        assert_eq!(
            Event::parse("m\nr\ne\n1\n2\no\n3\n4\nd"),
            Err(Malformed("body"))
        );
        let chat = Event::parse("m\nr\ne\n1\n2\no\n3\n4\n\"a\"\nno tab\n\n\n").unwrap();
        assert_eq!(chat.chat(), Err(Malformed("body")));
        let join = Event::parse("J\nr\ne\n1\n2\no\n3\n4\n\"a\"\n\nx-1\n\n").unwrap();
        assert_eq!(join.users(), Err(Malformed("users")));
        let odd = Event::parse("J\nr\ne\n1\n2\no\n3\n4\n\"a\"\n\n\nyes\n");
        assert_eq!(odd, Err(Malformed("resumed")));
    }

    #[test]
    fn a_member_carries_its_verified_user_through_redis() {
        let field = member_field("Ann \"A\" Lee", Some("u 1"));
        assert!(!field.contains(['\t', '\n']));
        assert_eq!(
            member_parts(&field),
            Some(("Ann \"A\" Lee".to_owned(), Some("u 1".to_owned())))
        );
        assert_eq!(member_parts("\"bo\""), Some(("bo".to_owned(), None)));
        for bad in ["", "bo", "\"a\" 5", "\"a\" \"b\" \"c\""] {
            assert_eq!(member_parts(bad), None, "{bad}");
        }
        let text = format!("J\nr\ne\n0\n1\nx-1\n1\n\n{field}\n\nx-1\t{field}\n\n");
        let ev = Event::parse(&text).unwrap();
        assert_eq!(ev.member().unwrap().1.as_deref(), Some("u 1"));
        assert_eq!(ev.users().unwrap()[0].2.as_deref(), Some("u 1"));
    }

    #[test]
    fn positions_follow_the_kind() {
        let p = Pos { seq: 4, k: 9 };
        assert_eq!(p.next(Kind::Chat), Pos { seq: 5, k: 9 });
        assert_eq!(p.next(Kind::Gone), Pos { seq: 4, k: 10 });
        assert!(Pos { seq: 5, k: 0 } > p && Pos { seq: 4, k: 10 } > p);
    }
}
