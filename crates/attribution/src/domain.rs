//! Domain and address normalisation, and the two matching rules of the model:
//! `covers` (an accepted domain covers a domain, exo-attribution.md §3.4) and `name_match`
//! (a `TlsSenderCertificateName` or `SenderDomains` pattern matches a name, §3.2).
//!
//! Everything here works on normalised text (§2.2 \[MODEL\]): ASCII case folded, one trailing dot
//! removed, and non-ASCII labels turned into their punycode (`xn--`) form. Full IDNA mapping
//! (UTS #46: NFC, width folding, ideographic dots) is left to whoever feeds the model; this module
//! only lower-cases such labels before encoding them, which is enough to compare the same name
//! written in the same way.

use std::cmp::Ordering;

/// Normalises a domain for comparison (exo-attribution.md §2.2 \[MODEL\]).
///
/// Folds case, removes one trailing dot and writes non-ASCII labels in punycode.
pub fn normalize_domain(domain: &str) -> String {
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    trimmed
        .split('.')
        .map(normalize_label)
        .collect::<Vec<_>>()
        .join(".")
}

/// The normalised domain of an address: the text after the last `@` (§2.2 \[MODEL\]).
///
/// `None` for the null sender (empty text), for text without `@` and for an empty domain.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = normalize_domain(domain);
    (!domain.is_empty()).then_some(domain)
}

/// Normalises a whole address: local part in ASCII lower case, domain as [`normalize_domain`].
///
/// Exchange treats SMTP addresses case-insensitively; the spec only says so for domains
/// (§2.2), so folding the local part is our reading of how a directory lookup behaves \[MODEL\].
pub fn normalize_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!(
            "{}@{}",
            local.to_ascii_lowercase(),
            normalize_domain(domain)
        ),
        None => address.to_ascii_lowercase(),
    }
}

/// How closely an accepted domain covers a domain; greater is more specific (§3.4 \[MODEL\]:
/// most labels first, then an exact match before a subdomain match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    labels: usize,
    exact: bool,
}

/// `covers(a, d)` of exo-attribution.md §3.4 \[MODEL\]: `d` equals the accepted domain, or the
/// accepted domain matches subdomains and `d` ends with `.` + the accepted domain.
///
/// Both arguments must be normalised. Returns how specific the match is, `None` if it does not
/// cover `d`.
pub fn covers(accepted: &str, match_subdomains: bool, d: &str) -> Option<Specificity> {
    if accepted.is_empty() || d.is_empty() {
        return None;
    }
    let labels = accepted.split('.').count();
    if d == accepted {
        return Some(Specificity {
            labels,
            exact: true,
        });
    }
    (match_subdomains && is_strict_subdomain(d, accepted)).then_some(Specificity {
        labels,
        exact: false,
    })
}

/// `name_match(pattern, name)` of exo-attribution.md §3.2 [MODEL, built on the DOC wildcard
/// rule]: `*.D` matches `D` and every name ending in `.D` (a wildcard certificate name such as
/// `*.D` counts as such a name); any other pattern matches only itself.
///
/// Both arguments must be normalised.
pub fn name_match(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some("") => false,
        Some(base) => name == base || is_strict_subdomain(name, base),
        None => !pattern.is_empty() && pattern == name,
    }
}

/// Whether a `SenderDomains` entry covers the P1 domain (§4 step 2 \[MODEL on top of DOC\]):
/// `*` covers everything including the null sender (`None`); `*.d` covers `d` and its subdomains;
/// anything else covers only itself.
pub fn sender_domain_covers(pattern: &str, p1_domain: Option<&str>) -> bool {
    if pattern == "*" {
        return true;
    }
    p1_domain.is_some_and(|d| name_match(pattern, d))
}

/// Picks the better of two candidates: more specific wins, the earlier one (configuration order)
/// keeps ties.
pub(crate) fn more_specific<T>(
    best: Option<(Specificity, T)>,
    next: (Specificity, T),
) -> Option<(Specificity, T)> {
    match best {
        Some(current) if current.0.cmp(&next.0) != Ordering::Less => Some(current),
        _ => Some(next),
    }
}

fn is_strict_subdomain(name: &str, base: &str) -> bool {
    name.len() > base.len() + 1
        && name.ends_with(base)
        && name.as_bytes().get(name.len() - base.len() - 1) == Some(&b'.')
}

fn normalize_label(label: &str) -> String {
    if label.is_ascii() {
        return label.to_ascii_lowercase();
    }
    let lower = label.to_lowercase();
    match punycode::encode(&lower) {
        Some(encoded) => format!("xn--{encoded}"),
        // Only reachable with absurdly long labels; comparing the lower-cased text is the best
        // that is left, and it never matches an ASCII configuration value by accident.
        None => lower,
    }
}

/// Punycode encoding (RFC 3492 §6.3), with checked arithmetic instead of the RFC's overflow test.
mod punycode {
    const BASE: u32 = 36;
    const T_MIN: u32 = 1;
    const T_MAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    const INITIAL_BIAS: u32 = 72;
    const INITIAL_N: u32 = 128;

    /// Encodes `input`; `None` on arithmetic overflow.
    pub(super) fn encode(input: &str) -> Option<String> {
        let code_points: Vec<u32> = input.chars().map(u32::from).collect();
        let mut output: String = input.chars().filter(char::is_ascii).collect();
        let basic = u32::try_from(output.len()).ok()?;
        let total = u32::try_from(code_points.len()).ok()?;
        if basic > 0 {
            output.push('-');
        }
        let (mut n, mut delta, mut bias, mut handled) = (INITIAL_N, 0u32, INITIAL_BIAS, basic);
        while handled < total {
            let m = code_points.iter().copied().filter(|&c| c >= n).min()?;
            delta = delta.checked_add((m - n).checked_mul(handled + 1)?)?;
            n = m;
            for &c in &code_points {
                if c < n {
                    delta = delta.checked_add(1)?;
                }
                if c == n {
                    emit(&mut output, delta, bias);
                    bias = adapt(delta, handled + 1, handled == basic);
                    delta = 0;
                    handled += 1;
                }
            }
            delta = delta.checked_add(1)?;
            n = n.checked_add(1)?;
        }
        Some(output)
    }

    fn emit(output: &mut String, delta: u32, bias: u32) {
        let mut q = delta;
        let mut k = BASE;
        loop {
            let t = threshold(k, bias);
            if q < t {
                break;
            }
            output.push(digit(t + (q - t) % (BASE - t)));
            q = (q - t) / (BASE - t);
            k += BASE;
        }
        output.push(digit(q));
    }

    fn threshold(k: u32, bias: u32) -> u32 {
        k.saturating_sub(bias).clamp(T_MIN, T_MAX)
    }

    fn adapt(delta: u32, num_points: u32, first_time: bool) -> u32 {
        let mut delta = if first_time { delta / DAMP } else { delta / 2 };
        delta += delta / num_points;
        let mut k = 0;
        while delta > ((BASE - T_MIN) * T_MAX) / 2 {
            delta /= BASE - T_MIN;
            k += BASE;
        }
        k + (BASE - T_MIN + 1) * delta / (delta + SKEW)
    }

    fn digit(d: u32) -> char {
        // d < 36 by construction: 0..=25 are a..z, 26..=35 are 0..9.
        let byte = match d {
            0..=25 => b'a' + d as u8,
            _ => b'0' + (d.min(35) - 26) as u8,
        };
        char::from(byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let table = [
            ("Contoso.COM", "contoso.com"),
            ("contoso.com.", "contoso.com"),
            ("contoso.com..", "contoso.com."),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example", "xn--bcher-kva.example"),
            ("xn--BCHER-kva.example", "xn--bcher-kva.example"),
            ("münchen.de", "xn--mnchen-3ya.de"),
            ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
            ("", ""),
        ];
        for (input, expected) in table {
            assert_eq!(normalize_domain(input), expected, "{input}");
        }
    }

    #[test]
    fn address_domains() {
        let table = [
            ("alice@Contoso.com", Some("contoso.com")),
            ("\"a@b\"@contoso.com.", Some("contoso.com")),
            ("", None),
            ("postmaster", None),
            ("alice@", None),
        ];
        for (address, expected) in table {
            assert_eq!(domain_of(address).as_deref(), expected, "{address}");
        }
    }

    #[test]
    fn covers_table() {
        let table = [
            ("contoso.com", false, "contoso.com", true),
            ("contoso.com", false, "eu.contoso.com", false),
            ("contoso.com", true, "eu.contoso.com", true),
            ("contoso.com", true, "a.b.contoso.com", true),
            ("contoso.com", true, "notcontoso.com", false),
            ("contoso.com", true, "com", false),
            ("", true, "contoso.com", false),
        ];
        for (accepted, subdomains, d, expected) in table {
            assert_eq!(
                covers(accepted, subdomains, d).is_some(),
                expected,
                "{accepted} {d}"
            );
        }
    }

    #[test]
    fn exact_is_more_specific_than_subdomain_match() {
        let exact = covers("eu.contoso.com", false, "eu.contoso.com");
        let parent = covers("contoso.com", true, "eu.contoso.com");
        let sibling_rule = covers("eu.contoso.com", true, "x.eu.contoso.com");
        assert!(exact > parent);
        assert!(sibling_rule > parent);
        assert!(exact > sibling_rule);
    }

    #[test]
    fn name_match_table() {
        let table = [
            ("*.contoso.com", "contoso.com", true),
            ("*.contoso.com", "mail.contoso.com", true),
            ("*.contoso.com", "a.b.contoso.com", true),
            ("*.contoso.com", "*.contoso.com", true),
            ("*.contoso.com", "*.eu.contoso.com", true),
            ("*.contoso.com", "evilcontoso.com", false),
            ("mail.contoso.com", "mail.contoso.com", true),
            ("mail.contoso.com", "*.contoso.com", false),
            ("mail.contoso.com", "smtp.contoso.com", false),
            ("*.", "", false),
            ("", "", false),
        ];
        for (pattern, name, expected) in table {
            assert_eq!(name_match(pattern, name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn sender_domains_table() {
        let table = [
            ("*", None, true),
            ("*", Some("example.org"), true),
            ("partnerbank.example", None, false),
            ("partnerbank.example", Some("partnerbank.example"), true),
            (
                "*.partnerbank.example",
                Some("eu.partnerbank.example"),
                true,
            ),
            ("partnerbank.example", Some("eu.partnerbank.example"), false),
        ];
        for (pattern, p1, expected) in table {
            assert_eq!(
                sender_domain_covers(pattern, p1),
                expected,
                "{pattern} {p1:?}"
            );
        }
    }
}
