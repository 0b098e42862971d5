//! Bounds on every size and count a spec can set (DESIGN.md §10): a value outside them fails
//! validation with the setting's name and the allowed range, instead of aborting on an
//! allocation or overflowing an offset at run time.

use crate::batch::MAX_RECORD_BYTES;

/// Checks that `value` lies in `min..=max`.
pub fn check_range(name: &str, value: u64, min: u64, max: u64) -> anyhow::Result<()> {
    if value < min || value > max {
        anyhow::bail!("`{name}` is {value}; it must be between {min} and {max}");
    }
    Ok(())
}

/// A `max_record_bytes` setting: 1 byte to [`MAX_RECORD_BYTES`] (256 MiB).
pub fn check_record_bytes(value: usize) -> anyhow::Result<()> {
    check_range("max_record_bytes", value as u64, 1, MAX_RECORD_BYTES as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_name_the_setting_and_the_range() {
        assert!(check_record_bytes(4 << 20).is_ok());
        let e = check_record_bytes(1 << 40).unwrap_err().to_string();
        assert!(e.contains("max_record_bytes") && e.contains("268435456"), "{e}");
        assert!(check_record_bytes(0).is_err());
    }
}
