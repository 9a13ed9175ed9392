//! Java-compatible `String.hashCode` and the Distro ownership hash.
//!
//! Nacos picks the owner of a service as
//! `abs(hashCode(groupedName) % Integer.MAX_VALUE) % healthyMembers`. Mixed
//! clusters only agree on ownership if we reproduce that bit for bit, so the
//! hash runs over UTF-16 code units with wrapping i32 arithmetic, as Java does.

/// Java's `String.hashCode`: `h = 31*h + c` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    for unit in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    h
}

/// `abs(java_string_hash(s) % 2147483647)`, as Nacos `DistroHashUtil`.
pub fn distro_hash(s: &str) -> u32 {
    // `%` on i32 keeps the sign of the dividend; the result's magnitude is
    // below i32::MAX, so `abs` cannot overflow.
    (java_string_hash(s) % i32::MAX).unsigned_abs()
}

/// Index of the owner among `members` healthy members.
pub fn owner_index(grouped_service: &str, members: usize) -> usize {
    assert!(members > 0, "owner_index needs at least one member");
    distro_hash(grouped_service) as usize % members
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // Values computed with Java's "...".hashCode().
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99162322);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    }

    #[test]
    fn spec_test_vectors_modulo_3() {
        assert_eq!(owner_index("DEFAULT_GROUP@@nacos.test.1", 3), 0);
        assert_eq!(owner_index("DEFAULT_GROUP@@svc", 3), 2);
        assert_eq!(owner_index("DEFAULT_GROUP@@order-service", 3), 1);
        assert_eq!(owner_index("g1@@服务", 3), 1);
    }
}
