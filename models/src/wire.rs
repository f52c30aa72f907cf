//! Request bodies are JSON objects, never arrays.
//!
//! serde's derived `Deserialize` for a struct also accepts the *sequence* form: the fields in
//! declaration order, so `["Run a 5k"]` decodes as an item with that title and every other
//! field defaulted. A client never means that, and it silently resets the fields it left out.
//! [`object_only!`](crate::object_only) gives a struct a `Deserialize` impl that asks the
//! format for a map and refuses anything else; inside, the derived code (generated as an
//! inherent `deserialize` fn by `#[serde(remote = "Self")]`) reads the map, so
//! `deny_unknown_fields`, `default`, `rename` and nested structs behave as derived. Nested
//! structs need the macro too: each level refuses sequences on its own.
//!
//! ```
//! use serde::Deserialize;
//!
//! #[derive(Debug, Deserialize)]
//! #[serde(remote = "Self", deny_unknown_fields)]
//! struct Body {
//!     title: String,
//! }
//! momentum_models::object_only!(Body);
//!
//! assert_eq!(serde_json::from_str::<Body>(r#"{"title":"a"}"#).unwrap().title, "a");
//! assert!(serde_json::from_str::<Body>(r#"["a"]"#).is_err());
//! ```
//!
//! `object_only!(Type, serialize)` also forwards `Serialize` to the inherent `serialize` the
//! derive generates under `remote = "Self"`, for types that derive both.

/// Gives `$ty` (which derives `Deserialize` with `#[serde(remote = "Self")]`) a `Deserialize`
/// impl that accepts only a map (a JSON object). See [`crate::wire`].
#[macro_export]
macro_rules! object_only {
    ($ty:ident) => {
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D>(deserializer: D) -> ::std::result::Result<Self, D::Error>
            where
                D: ::serde::Deserializer<'de>,
            {
                struct ObjectVisitor;
                impl<'de> ::serde::de::Visitor<'de> for ObjectVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($ty), ")"))
                    }
                    fn visit_map<A>(self, map: A) -> ::std::result::Result<$ty, A::Error>
                    where
                        A: ::serde::de::MapAccess<'de>,
                    {
                        $ty::deserialize(::serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_map(ObjectVisitor)
            }
        }
    };
    ($ty:ident, serialize) => {
        $crate::object_only!($ty);
        impl ::serde::Serialize for $ty {
            fn serialize<S>(&self, serializer: S) -> ::std::result::Result<S::Ok, S::Error>
            where
                S: ::serde::Serializer,
            {
                $ty::serialize(self, serializer)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(remote = "Self", deny_unknown_fields)]
    struct Inner {
        a: u32,
    }
    crate::object_only!(Inner);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self", deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        name: String,
        #[serde(default, skip_serializing)]
        inner: Option<InnerBoth>,
        #[serde(default, skip_serializing)]
        list: Vec<InnerBoth>,
    }
    crate::object_only!(Outer, serialize);

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(remote = "Self")]
    struct InnerBoth {
        a: u32,
    }
    crate::object_only!(InnerBoth);

    #[test]
    fn objects_decode_as_derived() {
        let o: Outer = serde_json::from_str(r#"{"name":"x","inner":{"a":1},"list":[{"a":2}]}"#)
            .expect("an object");
        assert_eq!(o.name, "x");
        assert_eq!(o.inner, Some(InnerBoth { a: 1 }));
        assert_eq!(o.list, vec![InnerBoth { a: 2 }]);
        let d: Outer = serde_json::from_str("{}").expect("defaults");
        assert_eq!(d.name, "");
        assert!(serde_json::from_str::<Outer>(r#"{"nope":1}"#).is_err());
        assert!(serde_json::from_str::<Inner>(r#"{"a":1,"b":2}"#).is_err());
    }

    #[test]
    fn sequences_are_refused_at_every_level() {
        for body in [
            r#"[]"#,
            r#"["x"]"#,
            r#"{"inner":[1]}"#,
            r#"{"list":[[2]]}"#,
            r#""x""#,
            "1",
            "null",
        ] {
            let err = serde_json::from_str::<Outer>(body).expect_err(body);
            assert!(err.to_string().contains("a JSON object"), "{body}: {err}");
        }
        assert!(serde_json::from_str::<Inner>("[1]").is_err());
    }

    #[test]
    fn serialize_forwards_to_the_derived_code() {
        let o = Outer {
            name: "n".into(),
            inner: None,
            list: vec![],
        };
        assert_eq!(serde_json::to_string(&o).unwrap(), r#"{"name":"n"}"#);
    }
}

/// Integer fields that also accept a JSON number with an integral value (`2.0`, `1e3`): JSON
/// has one number type and JSON Schema's `integer` includes them, so a client may send one.
/// Anything fractional, negative or out of range is refused. Use with
/// `#[serde(deserialize_with = "momentum_models::wire::integral::exact")]` (or `::option`
/// for an `Option` with `#[serde(default)]`).
pub mod integral {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Error, Visitor};
    use serde::Deserializer;

    struct Integral<T>(PhantomData<T>);

    impl<T: TryFrom<u64>> Visitor<'_> for Integral<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("{v} is negative")))
                .and_then(|v| self.visit_u64(v))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
            // 2^64 is the first f64 beyond u64::MAX.
            if v.is_finite() && v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v)
            {
                self.visit_u64(v as u64)
            } else {
                Err(E::custom(format!("{v} is not a non-negative integer")))
            }
        }
    }

    /// A required integer.
    pub fn exact<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(Integral(PhantomData))
    }

    /// An optional integer (`null` is absent).
    pub fn option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
        struct Opt<T>(PhantomData<T>);
        impl<'de, T: TryFrom<u64>> Visitor<'de> for Opt<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or null")
            }
            fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                exact(d).map(Some)
            }
        }
        d.deserialize_option(Opt(PhantomData))
    }

    #[cfg(test)]
    mod tests {
        use serde::Deserialize;

        #[derive(Debug, Deserialize)]
        struct N {
            #[serde(deserialize_with = "super::exact")]
            n: u32,
            #[serde(default, deserialize_with = "super::option")]
            m: Option<usize>,
        }

        #[test]
        fn integral_numbers_are_accepted_and_others_refused() {
            let n: N = serde_json::from_str(r#"{"n": 2089.0, "m": 1e3}"#).unwrap();
            assert_eq!((n.n, n.m), (2089, Some(1000)));
            let n: N = serde_json::from_str(r#"{"n": 7, "m": null}"#).unwrap();
            assert_eq!((n.n, n.m), (7, None));
            let n: N = serde_json::from_str(r#"{"n": 7}"#).unwrap();
            assert_eq!(n.m, None);
            for bad in [
                r#"{"n": 1.5}"#,
                r#"{"n": -1}"#,
                r#"{"n": -1.0}"#,
                r#"{"n": 4294967296}"#,
                r#"{"n": 1e300}"#,
                r#"{"n": "1"}"#,
                r#"{"n": 1, "m": 0.5}"#,
            ] {
                assert!(serde_json::from_str::<N>(bad).is_err(), "{bad}");
            }
        }
    }
}
