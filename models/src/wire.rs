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
