//! Number formatting shared by canonical JSON and the go-deep-agent mode.
//!
//! Both formats print a finite `f64` the way ECMAScript's `Number.prototype.toString` does:
//! the shortest decimal digits that read back to the same double, laid out in plain decimal
//! notation when the decimal exponent is in `[-6, 21)` and in exponent notation otherwise.
//! Go's `encoding/json` uses the same cutoffs (`abs < 1e-6 || abs >= 1e21`), so the two only
//! differ for negative zero, which the callers handle.

/// Appends the ECMAScript `Number.prototype.toString` form of `v` to `out`.
///
/// `v` must be finite; both zeros print as `0`.
pub(super) fn write_es_number(out: &mut String, v: f64) {
    debug_assert!(v.is_finite(), "write_es_number called with {v}");
    if v == 0.0 {
        out.push('0');
        return;
    }
    if v < 0.0 {
        out.push('-');
    }
    let (digits, n) = shortest_digits(v.abs());
    write_es_layout(out, &digits, n);
}

/// The shortest decimal digits that read back as `v` (finite, positive), and among those of
/// that length the closest to `v`, ties broken to an even last digit (ECMA-262
/// Number::toString step 5, which Go's `strconv` and Python's `repr` also follow).
///
/// Returns `(digits, n)` with `v ≈ 0.digits × 10^n`; `digits` has no leading or trailing
/// zeros.
///
/// Rust's own shortest formatting (`{}` / `{:e}`) finds the right *length* but, when `v`
/// lies exactly halfway between two candidates, may pick the odd one (it prints
/// `-610553217107027.3` for `-610553217107027.25`, where JavaScript and Go print `.2`), so
/// the digits are recomputed here with Rust's exact formatting, which rounds half to even.
fn shortest_digits(v: f64) -> (String, i32) {
    // Shortest length k, from Rust's shortest formatting.
    let shortest = format!("{v:e}");
    let (mantissa, _) = split_exponent(&shortest);
    let k = mantissa.bytes().filter(u8::is_ascii_digit).count();

    // The k-digit decimal closest to v (exact, ties to even): s0 × 10^e.
    let exact = format!("{:.*e}", k - 1, v);
    let (mantissa, exponent) = split_exponent(&exact);
    let s0: u64 = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .fold(0, |acc, d| acc * 10 + u64::from(d - b'0'));
    let e = exponent - (k as i32 - 1);

    let reads_back = |s: u64| format!("{s}e{e}").parse::<f64>() == Ok(v);
    let (mut s, mut e) = if reads_back(s0) {
        (s0, e)
    } else {
        // Near a power of two the round-trip interval is lopsided and the closest k-digit
        // decimal can fall outside it; then the closest one that reads back is its
        // neighbour on the other side of v.
        let back: f64 = format!("{s0}e{e}").parse().unwrap_or(v);
        let s1 = if back < v { s0 + 1 } else { s0 - 1 };
        if reads_back(s1) {
            (s1, e)
        } else {
            // Unreachable if Rust's shortest length is right; fall back to its digits.
            debug_assert!(false, "no {k}-digit decimal reads back as {v:e}");
            let (mantissa, exponent) = split_exponent(&shortest);
            let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
            return (digits, exponent + 1);
        }
    };
    while s.is_multiple_of(10) {
        s /= 10;
        e += 1;
    }
    let digits = s.to_string();
    let n = digits.len() as i32 + e;
    (digits, n)
}

/// Splits Rust `LowerExp` output (`d.ddde-x`) into the mantissa and the exponent.
fn split_exponent(sci: &str) -> (&str, i32) {
    let (mantissa, exponent) = sci
        .split_once('e')
        .expect("LowerExp output always has an exponent");
    let exponent = exponent
        .parse()
        .expect("LowerExp exponent is a decimal integer");
    (mantissa, exponent)
}

/// Lays out significant `digits` (no leading or trailing zeros, at least one digit) whose
/// value is `0.digits × 10^n`, following ECMA-262 Number::toString steps 6–10.
fn write_es_layout(out: &mut String, digits: &str, n: i32) {
    let k = digits.len() as i32;
    if k <= n && n <= 21 {
        // Integer: the digits then n-k zeros.
        out.push_str(digits);
        push_zeros(out, n - k);
    } else if 0 < n && n <= 21 {
        // Decimal point inside the digits.
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        // Small number: 0.000ddd
        out.push_str("0.");
        push_zeros(out, -n);
        out.push_str(digits);
    } else {
        // Exponent notation: d[.ddd]e±x
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        let e = n - 1;
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&e.unsigned_abs().to_string());
    }
}

fn push_zeros(out: &mut String, count: i32) {
    for _ in 0..count {
        out.push('0');
    }
}

#[cfg(test)]
mod tests {
    use super::write_es_number;

    fn es(v: f64) -> String {
        let mut s = String::new();
        write_es_number(&mut s, v);
        s
    }

    /// 2^e for a normal exponent, exactly.
    fn pow2(e: i32) -> f64 {
        f64::from_bits(((e + 1023) as u64) << 52)
    }

    #[test]
    // Some literals below are exact binary values on purpose (…027.25 is a tie).
    #[allow(clippy::excessive_precision)]
    fn es_number_matches_ecmascript_examples() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.1, "0.1"),
            (0.7, "0.7"),
            (123.456, "123.456"),
            (100.0, "100"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (999999999999999900000.0, "999999999999999900000"),
            (1.2345678901234568e20, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1.5e-6, "0.0000015"),
            (1e-7, "1e-7"),
            (9.99e-7, "9.99e-7"),
            (9.999999999999998e-7, "9.999999999999997e-7"),
            (1.25e-10, "1.25e-10"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740993.0, "9007199254740992"),
            (4.35, "4.35"),
            (0.30000000000000004, "0.30000000000000004"),
            (1e100, "1e+100"),
            (-1e-100, "-1e-100"),
            // Exactly halfway between two shortest candidates: the even one wins.
            (-610553217107027.25, "-610553217107027.2"),
            (9007199254740994.0, "9007199254740994"),
            (f64::from_bits(1), "5e-324"),
            (pow2(-1022), "2.2250738585072014e-308"),
            (pow2(1023), "8.98846567431158e+307"),
            (pow2(-44), "5.684341886080802e-14"),
            // The closest 16-digit decimal (…044e-307) does not read back; its neighbour does.
            (pow2(-1017), "7.120236347223045e-307"),
            (pow2(-808), "5.858190679279809e-244"),
        ];
        for (v, want) in cases {
            assert_eq!(es(*v), *want, "formatting {v:e}");
        }
    }
}
