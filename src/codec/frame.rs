//! The WebSocket frames the server writes (RFC 6455 §5.2): FIN set, never
//! masked, never fragmented. Reading client frames is tungstenite's job.

/// Opcodes of the frames we write.
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

/// A WebSocket Ping with no payload.
pub(crate) const PING: &[u8] = &[0x89, 0x00];

/// The longest header a frame has.
pub(crate) const MAX_HEADER: usize = 10;

/// The length of the header `frame` puts before a payload of `len` bytes.
pub(crate) fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// The payload of a frame `frame` built (its header skipped).
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(header_len(len) + len);
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A text frame made of `buf`, whose first `MAX_HEADER` bytes are room for
/// the header and the rest the payload: the header is written into that
/// room, and the room it does not need is dropped (a copy within `buf`, no
/// new allocation).
pub(crate) fn text_in_place(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() - MAX_HEADER;
    let start = MAX_HEADER - header_len(len);
    buf[start] = 0x80 | TEXT; // FIN and opcode
    match len {
        0..=125 => buf[start + 1] = len as u8,
        126..=0xFFFF => {
            buf[start + 1] = 126;
            buf[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            buf[start + 1] = 127;
            buf[start + 2..start + 10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
    buf.drain(..start);
    buf
}

/// A text frame around `payload`.
pub(crate) fn text(payload: &[u8]) -> Box<[u8]> {
    frame(TEXT, payload).into_boxed_slice()
}

/// A Close frame with a status code and a short reason.
pub(crate) fn close(code: u16, reason: &str) -> Box<[u8]> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(CLOSE, &payload).into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_three_encodings() {
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = text(&[b'x'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        let large = text(&vec![b'x'; 70_000]);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        for len in [0, 125, 126, 65_535, 65_536] {
            let framed = text(&vec![7; len]);
            assert_eq!(framed.len(), header_len(len) + len);
            assert_eq!(payload(&framed), &vec![7; len][..]);
            let mut buf = vec![0; MAX_HEADER];
            buf.resize(MAX_HEADER + len, 7);
            assert_eq!(&text_in_place(buf)[..], &framed[..]);
        }
        assert_eq!(
            &close(1001, "bye")[..],
            &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']
        );
    }
}
