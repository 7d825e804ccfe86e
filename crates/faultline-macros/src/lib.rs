//! `#[derive(JobArgs)]` for Faultline: a job type's kind and defaults written once, as
//! attributes, and checked at compile time.
//!
//! ```ignore
//! use faultline::JobArgs;
//!
//! #[derive(serde::Serialize, serde::Deserialize, JobArgs)]
//! #[job(kind = "email.send", queue = "mail", max_attempts = 8, priority = 1, timeout = "30s")]
//! struct SendEmail { to: String }
//! ```
//!
//! Only `kind` is required. `queue`, `max_attempts`, `priority` and `timeout` set the type's
//! `JobOptions` (a timeout is a duration such as `30s`, `5m`, `1h 30m`); `unique = "active"`
//! makes it unique while live (the key derived from kind, queue and arguments). A bad attribute
//! is a compile error naming it.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::{parse_macro_input, DeriveInput, Expr, ExprLit, Lit, LitStr};

/// Implements `faultline::JobArgs` from the `#[job(...)]` attribute (see the crate docs).
#[proc_macro_derive(JobArgs, attributes(job))]
pub fn derive_job_args(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// What `#[job(...)]` said.
#[derive(Default)]
struct Job {
    kind: Option<LitStr>,
    queue: Option<LitStr>,
    max_attempts: Option<i32>,
    priority: Option<i16>,
    timeout_ms: Option<u64>,
    unique: Option<proc_macro2::TokenStream>,
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let job = read_attributes(input)?;
    let kind = job.kind.ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            "#[derive(JobArgs)] needs #[job(kind = \"...\")]: the kind workers route on",
        )
    })?;
    let name = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    let queue = option(job.queue.map(|q| quote!(::std::string::String::from(#q))));
    let max_attempts = option(job.max_attempts.map(|n| quote!(#n)));
    let priority = option(job.priority.map(|n| quote!(#n)));
    let timeout = option(
        job.timeout_ms
            .map(|ms| quote!(::std::time::Duration::from_millis(#ms))),
    );
    let unique = option(job.unique);
    Ok(quote! {
        impl #impl_generics ::faultline::JobArgs for #name #type_generics #where_clause {
            const KIND: &'static str = #kind;
            fn options() -> ::faultline::JobOptions {
                ::faultline::JobOptions {
                    queue: #queue,
                    priority: #priority,
                    max_attempts: #max_attempts,
                    timeout: #timeout,
                    unique: #unique,
                }
            }
        }
    })
}

fn option(value: Option<proc_macro2::TokenStream>) -> proc_macro2::TokenStream {
    match value {
        Some(value) => quote!(::std::option::Option::Some(#value)),
        None => quote!(::std::option::Option::None),
    }
}

fn read_attributes(input: &DeriveInput) -> syn::Result<Job> {
    let mut job = Job::default();
    for attribute in input.attrs.iter().filter(|a| a.path().is_ident("job")) {
        attribute.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let value: Expr = meta.value()?.parse()?;
            match key.as_str() {
                "kind" => job.kind = Some(non_empty(&key, &value)?),
                "queue" => job.queue = Some(non_empty(&key, &value)?),
                "max_attempts" => job.max_attempts = Some(integer(&key, &value, 1)?),
                "priority" => job.priority = Some(integer(&key, &value, i16::MIN.into())?),
                "timeout" => job.timeout_ms = Some(duration(&key, &value)?),
                "unique" => job.unique = Some(unique(&key, &value)?),
                _ => {
                    return Err(meta.error(format!(
                        "unknown #[job] attribute `{key}`: expected kind, queue, max_attempts, \
                         priority, timeout or unique"
                    )))
                }
            }
            Ok(())
        })?;
    }
    Ok(job)
}

fn string<'a>(key: &str, value: &'a Expr) -> syn::Result<&'a LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) => Ok(text),
        other => Err(syn::Error::new_spanned(
            other,
            format!("#[job({key} = ...)] takes a string literal"),
        )),
    }
}

fn non_empty(key: &str, value: &Expr) -> syn::Result<LitStr> {
    let text = string(key, value)?;
    if text.value().trim().is_empty() || text.value().trim() != text.value() {
        return Err(syn::Error::new_spanned(
            text,
            format!("#[job({key} = ...)] must not be empty or padded with spaces"),
        ));
    }
    Ok(text.clone())
}

fn integer<T>(key: &str, value: &Expr, min: i64) -> syn::Result<T>
where
    T: TryFrom<i64>,
{
    let number = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => n.base10_parse::<i64>().ok(),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => match expr.as_ref() {
            Expr::Lit(ExprLit {
                lit: Lit::Int(n), ..
            }) => n.base10_parse::<i64>().ok().map(|n| -n),
            _ => None,
        },
        _ => None,
    };
    number
        .filter(|n| *n >= min)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            syn::Error::new_spanned(
                value,
                format!("#[job({key} = ...)] takes an integer in range (at least {min})"),
            )
        })
}

fn duration(key: &str, value: &Expr) -> syn::Result<u64> {
    let text = string(key, value)?;
    let parsed = humantime::parse_duration(&text.value()).map_err(|e| {
        syn::Error::new_spanned(
            text,
            format!("#[job({key} = ...)] is not a duration such as \"30s\" or \"5m\": {e}"),
        )
    })?;
    let ms = u64::try_from(parsed.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 || ms > i32::MAX as u64 {
        return Err(syn::Error::new_spanned(
            text,
            format!("#[job({key} = ...)] must be at least 1ms and under 24 days"),
        ));
    }
    Ok(ms)
}

fn unique(key: &str, value: &Expr) -> syn::Result<proc_macro2::TokenStream> {
    let text = string(key, value)?;
    match text.value().as_str() {
        "active" => Ok(quote!(::faultline::UniqueScope::Active)),
        other => Err(syn::Error::new_spanned(
            text,
            format!(
                "#[job({key} = ...)] takes \"active\" (at most one pending job with these \
                 arguments), got {other:?}"
            ),
        )),
    }
}
