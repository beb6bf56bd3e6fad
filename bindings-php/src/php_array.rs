//! PHP arrays read in place, slot by slot, as the engine's own `ZEND_HASH_FOREACH` does: no key
//! is copied and no position is looked up again per entry.
//!
//! A PHP 8.2+ array is either packed (values only, the key of each is its slot) or a hash
//! (buckets holding a value, an integer key `h` and a string key or null). Slots of removed
//! entries hold `UNDEF` and are skipped.

use std::slice;

use ext_php_rs::ffi::{Bucket, IS_UNDEF};
use ext_php_rs::types::{ZendHashTable, ZendStr, Zval};

/// `HASH_FLAG_PACKED` (`Zend/zend_hash.h`): the array holds bare values, keyed by slot.
const HASH_FLAG_PACKED: u32 = 1 << 2;

/// The key of an entry, borrowed from the array.
#[derive(Clone, Copy)]
pub enum Key<'a> {
    /// An integer key.
    Index(i64),
    /// A string key.
    Name(&'a ZendStr),
}

fn is_packed(array: &ZendHashTable) -> bool {
    // SAFETY: `flags` is the union's 32-bit view of the array's flag bytes.
    unsafe { array.u.flags & HASH_FLAG_PACKED != 0 }
}

fn used(array: &ZendHashTable) -> usize {
    array.nNumUsed as usize
}

/// The packed array's slots (values, including `UNDEF` holes).
fn packed_slots(array: &ZendHashTable) -> &[Zval] {
    let used = used(array);
    if used == 0 {
        return &[];
    }
    // SAFETY: a packed array's data is `nNumUsed` initialised zvals at `arPacked`, alive as
    // long as the array is borrowed.
    unsafe { slice::from_raw_parts(array.__bindgen_anon_1.arPacked, used) }
}

/// The hash array's buckets (including `UNDEF` holes).
fn buckets(array: &ZendHashTable) -> &[Bucket] {
    let used = used(array);
    if used == 0 {
        return &[];
    }
    // SAFETY: a hash array's data is `nNumUsed` initialised buckets at `arData`, alive as long
    // as the array is borrowed.
    unsafe { slice::from_raw_parts(array.__bindgen_anon_1.arData, used) }
}

/// The zval's type code (`IS_NULL`, `IS_LONG`, …), one byte read with no decoding.
pub fn type_code(value: &Zval) -> u32 {
    // SAFETY: every zval's type byte is initialised.
    u32::from(unsafe { value.u1.v.type_ })
}

/// An empty slot: the entry there was removed.
fn is_undef(value: &Zval) -> bool {
    type_code(value) == IS_UNDEF
}

/// True when the keys are 0, 1, … n-1 in this order (PHP's `array_is_list`), which
/// `json_encode` writes as a JSON array. The empty array is a list.
pub fn is_list(array: &ZendHashTable) -> bool {
    if is_packed(array) {
        // Packed: each key is its slot, so a list is one without holes.
        return used(array) == array.nNumOfElements as usize;
    }
    let mut next = 0u64;
    for bucket in buckets(array) {
        if is_undef(&bucket.val) {
            continue;
        }
        if !bucket.key.is_null() || bucket.h != next {
            return false;
        }
        next += 1;
    }
    true
}

/// The values of the array in order.
pub fn values(array: &ZendHashTable) -> impl Iterator<Item = &Zval> {
    entries(array).map(|(_, value)| value)
}

/// The entries of the array in order, with their keys.
pub fn entries(array: &ZendHashTable) -> impl Iterator<Item = (Key<'_>, &Zval)> {
    let (packed, hashed) = if is_packed(array) {
        (packed_slots(array), &[][..])
    } else {
        (&[][..], buckets(array))
    };
    let packed = packed
        .iter()
        .enumerate()
        .map(|(slot, value)| (Key::Index(slot as i64), value));
    let hashed = hashed.iter().map(|bucket| {
        // SAFETY: a non-null bucket key is a live zend_string owned by the array.
        let key = match unsafe { bucket.key.as_ref() } {
            Some(name) => Key::Name(name),
            // Integer keys are stored as the bits of a zend_long.
            None => Key::Index(bucket.h as i64),
        };
        (key, &bucket.val)
    });
    packed.chain(hashed).filter(|(_, value)| !is_undef(value))
}
