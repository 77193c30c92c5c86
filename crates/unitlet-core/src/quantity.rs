//! Kubernetes resource quantities, parsed exactly (no floating point).

/// A parse failure; the caller adds the field path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a valid quantity (examples: 500m, 2, 128Mi, 1G)")]
pub struct QuantityError(pub String);

/// Parses a quantity into an integer number of `1/scale` units, rounding up
/// as Kubernetes does (`milli` for CPU with scale 1000, bytes with scale 1).
pub fn parse_scaled(q: &str, scale: u128) -> Result<u128, QuantityError> {
    let err = || QuantityError(q.to_string());
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num.starts_with('-') {
        return Err(err());
    }
    // Decimal exponent suffixes like 1e3 are legal too.
    let (mul_num, mul_den): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..].parse().map_err(|_| err())?;
            (10u128.checked_pow(exp).ok_or_else(err)?, 1)
        }
        _ => return Err(err()),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 18
    {
        return Err(err());
    }
    let frac_den = 10u128.pow(frac.len() as u32);
    let digits: u128 = format!("{int}{frac}").parse().map_err(|_| err())?;
    let numer = digits
        .checked_mul(mul_num)
        .and_then(|v| v.checked_mul(scale))
        .ok_or_else(err)?;
    let denom = frac_den * mul_den;
    Ok(numer.div_ceil(denom))
}

/// CPU in millicores.
pub fn cpu_millis(q: &str) -> Result<u64, QuantityError> {
    parse_scaled(q, 1000).and_then(|v| u64::try_from(v).map_err(|_| QuantityError(q.into())))
}

/// Memory in bytes.
pub fn bytes(q: &str) -> Result<u64, QuantityError> {
    parse_scaled(q, 1).and_then(|v| u64::try_from(v).map_err(|_| QuantityError(q.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.1"), Ok(100));
        assert_eq!(cpu_millis("1.5"), Ok(1500));
        assert_eq!(cpu_millis("100u"), Ok(1));
        assert!(cpu_millis("abc").is_err());
        assert!(cpu_millis("-1").is_err());
        assert!(cpu_millis("").is_err());
    }

    #[test]
    fn memory() {
        assert_eq!(bytes("128Mi"), Ok(128 << 20));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("1e3"), Ok(1000));
        assert_eq!(bytes("1.5Ki"), Ok(1536));
        assert!(bytes("12XB").is_err());
    }
}
