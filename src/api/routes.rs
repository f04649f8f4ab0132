//! The API's routes: the operations poem-openapi generates from the endpoint structs
//! (`OpenApi::add_routes`), each path's methods under one layer of our own.
//!
//! `OpenApiService::into_endpoint` puts the same operations under a boxed endpoint, a query
//! layer, poem's `Route`, and per path a `RouteMethod` that boxes each operation once more: a
//! request went through five boxed futures (each a heap allocation and a copy of the 472-byte
//! request); here through three (counted with callgrind), among them the route's and the
//! operation's own.

use std::collections::HashMap;

use futures_util::future::Either;
use poem::{
    Endpoint, Request, Response, Result, Route, endpoint::BoxEndpoint,
    error::MethodNotAllowedError, http::Method,
};
use poem_openapi::{__private::UrlQuery, OpenApi};

/// The endpoint of every operation of `api`, routed by path and method.
pub fn routes<T: OpenApi>(api: T) -> Route {
    let mut table = HashMap::new();
    api.add_routes(&mut table);
    table
        .into_iter()
        .fold(Route::new(), |route, (path, methods)| {
            route.at(
                path,
                Methods {
                    methods: methods.into_iter().collect(),
                },
            )
        })
}

/// One path's operations, by method, as poem's `RouteMethod` chooses them: a `HEAD` without an
/// operation of its own is answered as the `GET`, without the body; a method the path does not
/// have is 405 (the edge adds `Allow` and renders the problem).
struct Methods {
    methods: Vec<(Method, BoxEndpoint<'static>)>,
}

impl Methods {
    fn find(&self, method: &Method) -> Option<&BoxEndpoint<'static>> {
        self.methods
            .iter()
            .find(|(candidate, _)| candidate == method)
            .map(|(_, endpoint)| endpoint)
    }
}

impl Endpoint for Methods {
    type Output = Response;

    // Not an `async fn`, which would hold the request twice (see `Edge::call`).
    fn call(&self, mut request: Request) -> impl Future<Output = Result<Response>> + Send {
        // What `into_endpoint` adds for the operations' query parameters to be read from.
        let query: Vec<(String, String)> = request.params().unwrap_or_default();
        request.extensions_mut().insert(UrlQuery(query));
        if let Some(endpoint) = self.find(request.method()) {
            return Either::Left(endpoint.call(request));
        }
        let get = (request.method() == Method::HEAD)
            .then(|| self.find(&Method::GET))
            .flatten();
        Either::Right(async move {
            let Some(get) = get else {
                return Err(MethodNotAllowedError.into());
            };
            request.set_method(Method::GET);
            let mut response = get.call(request).await?;
            response.set_body(());
            Ok(response)
        })
    }
}
