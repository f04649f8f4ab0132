//! The API's routes: the operations poem-openapi generates from the endpoint structs
//! (`OpenApi::add_routes`), each path's methods under one layer of our own.
//!
//! `OpenApiService::into_endpoint` puts the same operations under a boxed endpoint, a query
//! layer, poem's `Route`, and per path a `RouteMethod` that boxes each operation once more: a
//! request went through five boxed futures (each a heap allocation and a copy of the 472-byte
//! request); here through three (counted with callgrind), among them the route's and the
//! operation's own.

use std::collections::{HashMap, HashSet};

use futures_util::future::Either;
use poem::{
    Endpoint, Request, Response, Result, Route, endpoint::BoxEndpoint,
    error::MethodNotAllowedError, http::Method,
};
use poem_openapi::{__private::UrlQuery, OpenApi, registry::MetaParamIn};

/// The endpoint of every operation of `api`, routed by path and method.
pub fn routes<T: OpenApi>(api: T) -> Route {
    let reading_query = reading_query::<T>();
    let mut table = HashMap::new();
    api.add_routes(&mut table);
    table
        .into_iter()
        .fold(Route::new(), |route, (path, methods)| {
            let shape = shape(&path);
            let methods = methods
                .into_iter()
                .map(|(method, endpoint)| Operation {
                    reads_query: reading_query.contains(&(shape.clone(), method.clone())),
                    method,
                    endpoint,
                })
                .collect();
            route.at(path, Methods { methods })
        })
}

/// The operations that declare query parameters, by path shape and method: only they read
/// the parsed query (poem-openapi's `Query` extractor; a derived security scheme taking a key
/// from the query would too, but `auth::Auth` reads headers only), so only their requests pay
/// for it. Parsing and attaching it to every request cost a GET by id ~570 instructions
/// (callgrind), most of it the fourth extension growing the request's extension map.
fn reading_query<T: OpenApi>() -> HashSet<(String, Method)> {
    T::meta()
        .into_iter()
        .flat_map(|api| api.paths)
        .flat_map(|path| {
            let shape = shape(&path.path);
            path.operations
                .into_iter()
                .filter(|operation| {
                    operation
                        .params
                        .iter()
                        .any(|param| param.in_type == MetaParamIn::Query)
                })
                .map(move |operation| (shape.clone(), operation.method))
        })
        .collect()
}

/// A path with its variables blanked, the same for the spec's `/users/{id}` and the route
/// table's `/users/:param0`.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment.chars().next() {
            Some('{' | ':') => "*",
            _ => segment,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One path's operations, by method, as poem's `RouteMethod` chooses them: a `HEAD` without an
/// operation of its own is answered as the `GET`, without the body; a method the path does not
/// have is 405 (the edge adds `Allow` and renders the problem).
struct Methods {
    methods: Vec<Operation>,
}

struct Operation {
    method: Method,
    endpoint: BoxEndpoint<'static>,
    reads_query: bool,
}

impl Methods {
    fn find(&self, method: &Method) -> Option<&Operation> {
        self.methods
            .iter()
            .find(|operation| operation.method == method)
    }
}

impl Operation {
    /// What `into_endpoint` adds for the operations' query parameters to be read from. (Takes
    /// the request by reference: passed by value to a function that is not inlined, its 472
    /// bytes were copied once more.)
    fn attach_query(&self, request: &mut Request) {
        if self.reads_query {
            let query: Vec<(String, String)> = request.params().unwrap_or_default();
            request.extensions_mut().insert(UrlQuery(query));
        }
    }
}

impl Endpoint for Methods {
    type Output = Response;

    // Not an `async fn`, which would hold the request twice (see `Edge::call`).
    fn call(&self, mut request: Request) -> impl Future<Output = Result<Response>> + Send {
        if let Some(operation) = self.find(request.method()) {
            operation.attach_query(&mut request);
            return Either::Left(operation.endpoint.call(request));
        }
        let get = (request.method() == Method::HEAD)
            .then(|| self.find(&Method::GET))
            .flatten();
        Either::Right(async move {
            let Some(get) = get else {
                return Err(MethodNotAllowedError.into());
            };
            request.set_method(Method::GET);
            get.attach_query(&mut request);
            let mut response = get.endpoint.call(request).await?;
            response.set_body(());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Apis, apis};

    #[test]
    fn operations_reading_the_query_are_found_in_the_route_table() {
        let mut table = HashMap::new();
        apis().add_routes(&mut table);
        let routed: HashSet<(String, Method)> = table
            .iter()
            .flat_map(|(path, methods)| methods.keys().map(|method| (shape(path), method.clone())))
            .collect();
        let reading = reading_query::<Apis>();
        // A spec path that no longer matched its route would leave its query unparsed.
        assert!(
            reading.is_subset(&routed),
            "{:?}",
            reading.difference(&routed).collect::<Vec<_>>()
        );
        assert!(reading.contains(&("/api/v1/users".to_owned(), Method::GET)));
        assert!(reading.contains(&("/api/v1/api-keys".to_owned(), Method::GET)));
        assert!(!reading.contains(&("/api/v1/users/*".to_owned(), Method::GET)));
        assert!(!reading.contains(&("/api/v1/users".to_owned(), Method::POST)));
    }

    #[test]
    fn a_path_has_one_shape_whatever_its_variables_are_called() {
        assert_eq!(shape("/api/v1/users/{id}"), "/api/v1/users/*");
        assert_eq!(shape("/api/v1/users/:param0"), "/api/v1/users/*");
        assert_eq!(shape("/api/v1/users"), "/api/v1/users");
    }
}
