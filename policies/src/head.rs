//! Request headers a layer adds, prepared once and carried in the request's extensions
//! instead of being inserted into its `HeaderMap` one by one.
//!
//! RequireToken sets about twenty headers for a valid token (`X-Roles`, the ten identity
//! headers, the aliases, `X-Service-Catalog`...), the same ones for every request with that
//! token. Inserting them costs a hash, a reference count and a drop per header per
//! request, and a retry's copy of the request pays again. Instead the token keeps them as a
//! [`HeaderBlock`]: the name and value pairs, and their HTTP/1.1 wire form, built once. A
//! request carries an [`AddedHeaders`] pointing at the block (one reference count).
//!
//! Whoever sends the request on must honour it: a connection that writes the request head
//! itself writes [`AddedHeaders::wire`] after the request's own headers; any other sender
//! calls [`AddedHeaders::apply`] first, which moves the pairs into the `HeaderMap`. The
//! names in a block must have been removed from the request's own headers (RequireToken
//! removes every identity header a client sent), so writing the block never duplicates a
//! field.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Extensions;

/// Headers built once, in both forms.
#[derive(Debug, Default)]
pub struct HeaderBlock {
    pairs: Vec<(HeaderName, HeaderValue)>,
    /// `name: value\r\n` for each pair.
    wire: Box<[u8]>,
}

impl HeaderBlock {
    pub fn new(pairs: Vec<(HeaderName, HeaderValue)>) -> Self {
        let len = pairs
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        let mut wire = Vec::with_capacity(len);
        for (name, value) in &pairs {
            wire.extend_from_slice(name.as_str().as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        Self {
            pairs,
            wire: wire.into_boxed_slice(),
        }
    }

    pub fn pairs(&self) -> &[(HeaderName, HeaderValue)] {
        &self.pairs
    }

    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}

/// Something that holds header blocks, by index (a validated token holds one per variant
/// of its headers). Lets a request point at a block inside a shared value.
pub trait HoldsHeaderBlocks: Send + Sync {
    fn header_block(&self, index: usize) -> &HeaderBlock;
}

/// A request's added headers: a block of a shared holder. Put in the request's
/// extensions; see the module documentation for who must honour it.
#[derive(Clone)]
pub struct AddedHeaders {
    holder: Arc<dyn HoldsHeaderBlocks>,
    index: usize,
}

impl std::fmt::Debug for AddedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AddedHeaders").field(self.block()).finish()
    }
}

impl AddedHeaders {
    pub fn new(holder: Arc<dyn HoldsHeaderBlocks>, index: usize) -> Self {
        Self { holder, index }
    }

    pub fn block(&self) -> &HeaderBlock {
        self.holder.header_block(self.index)
    }

    /// The headers' HTTP/1.1 wire form, to write after the request's own headers.
    pub fn wire(&self) -> &[u8] {
        self.block().wire()
    }

    /// Sets the headers in `headers` (replacing any of the same name).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let pairs = self.block().pairs();
        headers.reserve(pairs.len());
        for (name, value) in pairs {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Takes the added headers out of `extensions`, if any, and sets them in `headers`:
    /// what a sender that does not write the head itself calls first.
    pub fn apply_from(extensions: &mut Extensions, headers: &mut HeaderMap) {
        if let Some(added) = extensions.remove::<AddedHeaders>() {
            added.apply(headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two([HeaderBlock; 2]);

    impl HoldsHeaderBlocks for Two {
        fn header_block(&self, index: usize) -> &HeaderBlock {
            &self.0[index]
        }
    }

    fn pair(n: &'static str, v: &'static str) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static(n), HeaderValue::from_static(v))
    }

    #[test]
    fn a_block_is_written_and_applied_alike() {
        let holder = Arc::new(Two([
            HeaderBlock::new(vec![
                pair("x-roles", "admin,member"),
                pair("x-user-id", "u1"),
            ]),
            HeaderBlock::default(),
        ]));
        let added = AddedHeaders::new(holder.clone(), 0);
        assert_eq!(added.wire(), b"x-roles: admin,member\r\nx-user-id: u1\r\n");

        let mut ext = Extensions::new();
        ext.insert(added);
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_static("old"));
        AddedHeaders::apply_from(&mut ext, &mut headers);
        assert!(ext.get::<AddedHeaders>().is_none(), "taken out");
        assert_eq!(headers["x-roles"], "admin,member");
        assert_eq!(headers["x-user-id"], "u1");
        assert_eq!(headers.len(), 2);

        let empty = AddedHeaders::new(holder, 1);
        assert!(empty.wire().is_empty());
    }
}
