//! `X-Forwarded-For` on the request path, without intermediate `String`s.
//!
//! The client's address is formatted into a stack buffer and becomes the
//! header value in one copy; only a client that sent its own
//! `X-Forwarded-For` costs a joined buffer. Before, `ip.to_string()` or
//! `format!("{prev}, {ip}")` went through `core::fmt` into a fresh `String`
//! on every request (bench part 6: ~3.9k instructions a request, with
//! pingora's `insert_header`).

use std::io::Write;
use std::net::IpAddr;

use bytes::Bytes;
use http::HeaderValue;

/// Longest textual IP address: an IPv6 with an embedded IPv4,
/// `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const MAX_IP_TEXT: usize = 45;

/// The `X-Forwarded-For` value to send upstream: `prev, ip` when the client
/// sent a non-empty one (one header line, as nginx's
/// `$proxy_add_x_forwarded_for`), else `ip`.
pub fn forwarded_for(prev: Option<&HeaderValue>, ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; MAX_IP_TEXT];
    let text = format_ip(ip, &mut buf);
    if let Some(prev) = prev.map(HeaderValue::as_bytes).filter(|p| !p.is_empty()) {
        let mut joined = Vec::with_capacity(prev.len() + 2 + text.len());
        joined.extend_from_slice(prev);
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(text);
        // `prev` was a valid value and the rest is ASCII: always valid.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
            return v;
        }
    }
    // Digits, dots, colons and hex letters: always a valid value.
    HeaderValue::from_bytes(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `ip` as text in `buf`; IPv4 by hand (the common case, no `core::fmt`).
fn format_ip(ip: IpAddr, buf: &mut [u8; MAX_IP_TEXT]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (k, octet) in v4.octets().into_iter().enumerate() {
                if k > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                n += format_u8(octet, &mut buf[n..]);
            }
            &buf[..n]
        }
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // 45 bytes hold every IPv6 text form; a failure leaves it short.
            let _ = write!(cursor, "{v6}");
            let n = cursor.position() as usize;
            &buf[..n]
        }
    }
}

/// Decimal digits of `v` at the start of `out`; returns how many.
fn format_u8(v: u8, out: &mut [u8]) -> usize {
    let digits = [v / 100, v / 10 % 10, v % 10];
    let skip = if v >= 100 {
        0
    } else if v >= 10 {
        1
    } else {
        2
    };
    for (o, d) in out.iter_mut().zip(&digits[skip..]) {
        *o = b'0' + d;
    }
    3 - skip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(prev: Option<&str>, ip: &str) -> String {
        let prev = prev.map(|p| HeaderValue::from_str(p).unwrap());
        let v = forwarded_for(prev.as_ref(), ip.parse().unwrap());
        v.to_str().unwrap().to_owned()
    }

    #[test]
    fn formats_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "fd00::1:2",
            "::ffff:1.2.3.4",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(xff(None, ip), ip.parse::<IpAddr>().unwrap().to_string());
        }
        for v in 0..=255u8 {
            let mut b = [0u8; 3];
            let n = format_u8(v, &mut b);
            assert_eq!(&b[..n], v.to_string().as_bytes());
        }
    }

    #[test]
    fn appends_to_what_the_client_sent() {
        assert_eq!(xff(Some("1.2.3.4"), "127.0.0.1"), "1.2.3.4, 127.0.0.1");
        assert_eq!(xff(Some("a, b"), "::1"), "a, b, ::1");
        // An empty header is replaced, not joined.
        assert_eq!(xff(Some(""), "127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn keeps_opaque_bytes_of_the_previous_value() {
        let prev = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        let v = forwarded_for(Some(&prev), "10.0.0.1".parse().unwrap());
        assert_eq!(v.as_bytes(), b"caf\xe9, 10.0.0.1");
    }
}
