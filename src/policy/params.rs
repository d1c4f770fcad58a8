//! Query strings and form bodies, read the way the API's servers read them. keyward needs
//! only two things from them, the fields to `expand` and whether `_method` is present, but it
//! must read them exactly as Rack (what Stripe's API is built on) will, so anything Rack could
//! read differently is refused, never normalised:
//!
//! - `;` (Rack also splits the query string on it), a raw space in a name (Rack's separator
//!   takes the spaces after an `&`);
//! - a name with stray or unbalanced brackets (Rack drops leading `[`/`]`, reads `expand]` as
//!   `expand` and `expand[0` as `expand[0]`), or an empty name;
//! - a malformed percent-encoding (Rack refuses it, other servers skip it), a name that is not
//!   UTF-8 or holds a control byte;
//! - `_method` under any spelling (Rack's MethodOverride turns a POST into its value);
//! - an `expand` other than `expand`, `expand[]` or `expand[N]`, given twice under one name,
//!   or in two of those forms at once (Rack keeps the last, or fails, where keyward would
//!   check both), or without `=` (Rack reads its value as nil).

use std::collections::HashSet;

/// Why fields are refused; completes "the request target …" (see `canonical`).
pub type Reason = &'static str;

/// The `expand` fields of a query string or form body (`application/x-www-form-urlencoded`),
/// percent-decoded, in order; or why it could be read two ways.
pub fn read(encoded: &[u8]) -> Result<Vec<String>, Reason> {
    let mut expand = Vec::new();
    // Which spelling of `expand` was used, and the names already seen (`expand`, `expand[0]`).
    let (mut form, mut seen) = (None::<ExpandForm>, HashSet::<String>::new());
    for pair in encoded.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue; // `a=1&&b=2`: nothing, to every reader
        }
        if pair.contains(&b';') {
            return Err("uses ; between parameters, which some servers read as &");
        }
        // Without `=` Rack reads the value as nil, not as empty.
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], Some(&pair[i + 1..])),
            None => (pair, None),
        };
        // Rack's separator is `&` and the spaces after it: `a=1& expand[]=x` is an expand.
        if k.contains(&b' ') {
            return Err("has a space in a parameter name, which some servers drop");
        }
        let key = decode(k).ok_or("has a malformed percent-encoding in a parameter")?;
        let value = decode(v.unwrap_or_default()).ok_or("has a malformed percent-encoding in a parameter")?;
        let key = String::from_utf8(key).map_err(|_| "has a parameter name that is not UTF-8")?;
        if key.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err("has a control byte in a parameter name");
        }
        let (name, subscripts) = split_name(&key)?;
        match name {
            "_method" => return Err("carries a _method override"),
            "expand" => {
                let this = ExpandForm::of(subscripts)?;
                // `expand[]` adds to a list; `expand` and `expand[N]` name one value each.
                let again = this != ExpandForm::List && !seen.insert(subscripts.to_string());
                if form.is_some_and(|f| f != this) || again {
                    return Err("gives expand twice, or in two forms, which servers read differently");
                }
                if v.is_none() {
                    return Err("has an expand without a value (no =)");
                }
                form = Some(this);
                expand.push(String::from_utf8(value).map_err(|_| "has an expand value that is not UTF-8")?);
            }
            _ => {}
        }
    }
    Ok(expand)
}

/// The value of the plain field `name` (no subscripts) of a form already read by [`read`],
/// percent-decoded; `None` if absent. A field keyward counts money by is read one way or not
/// at all: given twice (Rack keeps the last), with subscripts, or not UTF-8, it is refused.
pub fn field(encoded: &[u8], name: &str) -> Result<Option<String>, Reason> {
    let mut found = None;
    for pair in encoded.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let key = decode(k).ok_or("has a malformed percent-encoding in a parameter")?;
        let Ok(key) = std::str::from_utf8(&key) else { continue };
        let (base, subscripts) = split_name(key)?;
        if base != name {
            continue;
        }
        if !subscripts.is_empty() || found.is_some() {
            return Err(
                "gives a field that moves money twice, or with subscripts, which keyward does not read",
            );
        }
        let value = decode(v).ok_or("has a malformed percent-encoding in a parameter")?;
        found = Some(String::from_utf8(value).map_err(|_| "has a money field that is not UTF-8")?);
    }
    Ok(found)
}

/// `expand=x`, `expand[]=x` or `expand[N]=x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExpandForm {
    Plain,
    List,
    Indexed,
}

impl ExpandForm {
    fn of(subscripts: &str) -> Result<ExpandForm, Reason> {
        let index = subscripts.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
        match index {
            None if subscripts.is_empty() => Ok(ExpandForm::Plain),
            Some("") => Ok(ExpandForm::List),
            Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => Ok(ExpandForm::Indexed),
            _ => Err("has an expand parameter other than expand, expand[] or expand[N]"),
        }
    }
}

/// `a[b][]` → (`a`, `[b][]`): a name, then bracketed subscripts, each closed, none nested.
fn split_name(key: &str) -> Result<(&str, &str), Reason> {
    const STRAY: Reason = "has a parameter name with stray or unbalanced brackets";
    let end = key.find(['[', ']']).unwrap_or(key.len());
    let (name, mut rest) = key.split_at(end);
    if name.is_empty() {
        return Err(if rest.is_empty() { "has a parameter with an empty name" } else { STRAY });
    }
    let subscripts = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or(STRAY)?;
        let close = inner.find(['[', ']']).filter(|&i| inner.as_bytes()[i] == b']').ok_or(STRAY)?;
        rest = &inner[close + 1..];
    }
    Ok((name, subscripts))
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space). `None` if malformed.
pub fn decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits, no more lenient: `u8::from_str_radix` would take `%+1`.
                let hex = s.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What keyward reads from each input: the expand fields, or (a word of) why it refuses.
    /// Rows marked "Rack" are ones Rack 2.2 was seen to read differently from a naive reader.
    const TABLE: &[(&str, Result<&[&str], &str>)] = &[
        ("", Ok(&[])),
        ("limit=3", Ok(&[])),
        ("expand[]=customer", Ok(&["customer"])),
        ("expand=customer", Ok(&["customer"])),
        ("expand[0]=customer&expand[1]=invoice", Ok(&["customer", "invoice"])),
        ("expand[1]=a&expand[0]=b", Ok(&["a", "b"])),
        ("expand[]=a&expand[]=b", Ok(&["a", "b"])),
        ("expand%5B%5D=customer", Ok(&["customer"])),
        ("expand%5b0%5d=customer", Ok(&["customer"])),
        ("%65xpand[]=customer", Ok(&["customer"])),
        ("expand[]=latest_invoice.payment_intent", Ok(&["latest_invoice.payment_intent"])),
        ("expand[]=data%2Ecustomer", Ok(&["data.customer"])),
        ("expand[]=a+b", Ok(&["a b"])),
        ("expand=", Ok(&[""])),
        // Rack: without `=` the value is nil.
        ("expand", Err("without a value")),
        ("expand[]", Err("without a value")),
        ("a&b&expand[]=x", Ok(&["x"])),
        // Rack: the spaces after `&` belong to the separator.
        ("a=1& expand[]=x", Err("space")),
        (" expand=x", Err("space")),
        ("exp and=x", Err("space")),
        ("a=b c&%20expand=x&+expand=y", Ok(&[])),
        ("a=1&&expand[]=x&", Ok(&["x"])),
        ("metadata[expand]=x", Ok(&[])),
        ("metadata[k]=v&items[0][price]=p", Ok(&[])),
        ("expands=x&expand_x=y&xexpand=z", Ok(&[])),
        ("a=%3B&b=%26expand%3Dx", Ok(&[])),
        ("metadata[a;b]=x", Err("; between")),
        // Rack: `;` separates query parameters.
        ("a=1;expand[]=default_source", Err("; between")),
        ("expand[]=x;", Err("; between")),
        // Rack: leading brackets are dropped.
        ("[expand][]=default_source", Err("brackets")),
        ("[expand]=x", Err("brackets")),
        ("]expand=x", Err("brackets")),
        ("%5Bexpand%5D%5B%5D=x", Err("brackets")),
        // Rack: a trailing `]` is dropped, `expand[0` read as `expand[0]`.
        ("expand]=default_source", Err("brackets")),
        ("expand[0=default_source", Err("brackets")),
        ("expand[[]]=x", Err("brackets")),
        ("expand[]]=x", Err("brackets")),
        ("expand[]x=y", Err("brackets")),
        ("metadata[a]b=x", Err("brackets")),
        ("metadata[a[b]]=x", Err("brackets")),
        ("=x", Err("empty name")),
        ("[]=x", Err("brackets")),
        ("expand[a]=x", Err("other than expand")),
        ("expand[][]=x", Err("other than expand")),
        ("expand[0][x]=y", Err("other than expand")),
        ("expand[-1]=x", Err("other than expand")),
        // Rack keeps the last of two plain `expand`s; keyward would check both.
        ("expand=a&expand=b", Err("twice")),
        ("expand[0]=a&expand[0]=b", Err("twice")),
        ("expand=a&expand[]=b", Err("twice")),
        ("expand[]=a&expand[0]=b", Err("twice")),
        ("expand[]=%zz", Err("malformed")),
        ("expand%5=x", Err("malformed")),
        ("a=%", Err("malformed")),
        ("a%2=1", Err("malformed")),
        ("a=%G0", Err("malformed")),
        // Rack refuses it; `from_str_radix` alone would read it as 0x01.
        ("a=%+1", Err("malformed")),
        ("%00a=1", Err("control")),
        ("%ff=1", Err("not UTF-8")),
        ("expand[]=%ff", Err("not UTF-8")),
        ("_method=DELETE", Err("_method")),
        ("%5Fmethod=DELETE", Err("_method")),
        ("%5f%6Dethod=x", Err("_method")),
        ("_method", Err("_method")),
        ("_method[]=DELETE", Err("_method")),
        ("a=1&_method=PATCH", Err("_method")),
        ("a=_method&x_method=1&metadata[_method]=1", Ok(&[])),
    ];

    #[test]
    fn reads_query_strings_and_forms_as_the_servers_do_or_refuses() {
        assert!(TABLE.len() >= 40);
        let mut wrong = Vec::new();
        for (input, want) in TABLE {
            let got = read(input.as_bytes());
            let ok = match (&got, want) {
                (Ok(fields), Ok(w)) => fields.iter().map(String::as_str).eq(w.iter().copied()),
                (Err(why), Err(w)) => why.contains(w),
                _ => false,
            };
            if !ok {
                wrong.push(format!("{input:?}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn a_money_field_is_read_once_or_refused() {
        assert_eq!(field(b"charge=ch_1&amount=500", "amount"), Ok(Some("500".into())));
        assert_eq!(field(b"%61mount=7&metadata[amount]=9", "amount"), Ok(Some("7".into())));
        assert_eq!(field(b"charge=ch_1", "amount"), Ok(None));
        assert_eq!(field(b"amounts=1&x_amount=2", "amount"), Ok(None));
        for bad in ["amount=1&amount=2", "amount[]=1", "amount[x]=1", "amount=%ff", "amount=%zz"] {
            assert!(field(bad.as_bytes(), "amount").is_err(), "{bad}");
        }
    }

    #[test]
    fn raw_bytes_in_values_are_read_as_they_are() {
        assert_eq!(read("name=Jos\u{e9}&expand[]=x".as_bytes()), Ok(vec!["x".to_string()]));
        assert_eq!(read(b"name=\xff&expand[]=x"), Ok(vec!["x".to_string()]));
    }
}
