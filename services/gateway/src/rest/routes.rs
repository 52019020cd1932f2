//! The REST routes of every Switchyard gRPC method that has a `google.api.http` annotation, read
//! from the descriptor set the services are built from.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use switchyard_proto::google::api::{HttpRule, http_rule::Pattern};

use super::template::{Template, TemplateError};

/// What the HTTP body of a route fills.
#[derive(Debug, Clone)]
pub enum BodyField {
    /// No body: every field not in the path comes from the query.
    None,
    /// `body: "*"`: the body is the request, less the fields in the path.
    Whole,
    /// `body: "field"`: the body is that field; other fields come from the query.
    Field(FieldDescriptor),
}

/// One HTTP binding of one gRPC method.
#[derive(Debug)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path template.
    pub template: Template,
    /// `/package.Service/Method`.
    pub grpc_path: PathAndQuery,
    /// `package.Service.Method`, as configuration names it.
    pub full_name: String,
    /// The proto package, which picks the upstream.
    pub package: String,
    /// The request message.
    pub input: MessageDescriptor,
    /// The response message.
    pub output: MessageDescriptor,
    /// What the body fills.
    pub body: BodyField,
    /// The response field sent as the body, if not the whole response.
    pub response_body: Option<FieldDescriptor>,
    /// Whether the method streams its responses (sent as newline-delimited JSON).
    pub server_streaming: bool,
    /// Whether the method takes a stream of requests (sent as newline-delimited JSON).
    pub client_streaming: bool,
}

/// Why the annotations cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A template does not parse.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// An annotation does not fit its method.
    #[error("{method}: {problem}")]
    Invalid {
        /// `package.Service.Method`.
        method: String,
        /// What is wrong.
        problem: String,
    },
}

/// Why no route answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No template matches the path.
    NotFound,
    /// A template matches, with another HTTP method.
    MethodNotAllowed,
}

/// Every route, by HTTP method, the most specific template first.
#[derive(Debug, Default)]
pub struct Routes {
    by_method: HashMap<Method, Vec<Arc<Route>>>,
}

/// A matched route and the path variables it binds.
pub type Matched<'a> = (Arc<Route>, Vec<(&'a str, String)>);

impl Routes {
    /// The routes of every annotated method of every service in `pool`.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Routes, RouteError> {
        let mut routes = Routes::default();
        let Some(extension) = pool.get_extension_by_name("google.api.http") else {
            return Ok(routes);
        };
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                let value = options.get_extension(&extension);
                let rule: HttpRule = value
                    .as_message()
                    .and_then(|message| message.transcode_to().ok())
                    .ok_or_else(|| invalid(&method, "google.api.http does not decode"))?;
                routes.add_rule(&method, &rule)?;
                for binding in &rule.additional_bindings {
                    routes.add_rule(&method, binding)?;
                }
            }
        }
        for list in routes.by_method.values_mut() {
            list.sort_by_key(|route| std::cmp::Reverse(route.template.specificity()));
        }
        Ok(routes)
    }

    fn add_rule(&mut self, method: &MethodDescriptor, rule: &HttpRule) -> Result<(), RouteError> {
        let (verb, path) = match &rule.pattern {
            Some(Pattern::Get(path)) => (Method::GET, path),
            Some(Pattern::Put(path)) => (Method::PUT, path),
            Some(Pattern::Post(path)) => (Method::POST, path),
            Some(Pattern::Delete(path)) => (Method::DELETE, path),
            Some(Pattern::Patch(path)) => (Method::PATCH, path),
            Some(Pattern::Custom(custom)) => (
                Method::from_bytes(custom.kind.as_bytes())
                    .map_err(|_| invalid(method, "custom verb is not an HTTP method"))?,
                &custom.path,
            ),
            None => return Err(invalid(method, "no HTTP pattern")),
        };
        if method.is_client_streaming() && method.is_server_streaming() {
            return Err(invalid(
                method,
                "bidirectional streams have no REST binding",
            ));
        }
        if method.is_client_streaming() && rule.body != "*" {
            return Err(invalid(
                method,
                "a client stream's body must be \"*\": one message per line",
            ));
        }
        let template = Template::parse(path)?;
        let package = method.parent_service().package_name().to_owned();
        // The proto package's version is the route's prefix: switchyard.x.v2 is served at /v2/.
        let version = package.rsplit('.').next().unwrap_or_default();
        if template.version() != Some(version) {
            return Err(invalid(
                method,
                &format!("the path must start with /{version}/, the package's version"),
            ));
        }
        let input = method.input();
        for field_path in template.field_paths() {
            let field = resolve(&input, field_path)
                .ok_or_else(|| invalid(method, &format!("no field {field_path}")))?;
            if field.kind() != Kind::String || field.is_list() {
                return Err(invalid(
                    method,
                    &format!("path field {field_path} must be a string"),
                ));
            }
        }
        let body = match rule.body.as_str() {
            "" => BodyField::None,
            "*" => BodyField::Whole,
            name => BodyField::Field(
                input
                    .get_field_by_name(name)
                    .ok_or_else(|| invalid(method, &format!("no body field {name}")))?,
            ),
        };
        let response_body = match rule.response_body.as_str() {
            "" => None,
            name => Some(
                method
                    .output()
                    .get_field_by_name(name)
                    .ok_or_else(|| invalid(method, &format!("no response field {name}")))?,
            ),
        };
        let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let route = Route {
            method: verb.clone(),
            template,
            grpc_path: PathAndQuery::try_from(grpc_path)
                .map_err(|_| invalid(method, "the method's name is not a URL path"))?,
            full_name: method.full_name().to_owned(),
            package,
            input,
            output: method.output(),
            body,
            response_body,
            server_streaming: method.is_server_streaming(),
            client_streaming: method.is_client_streaming(),
        };
        self.by_method
            .entry(verb)
            .or_default()
            .push(Arc::new(route));
        Ok(())
    }

    /// The route for `method` and `path`, with its bound variables.
    pub fn find<'a>(&'a self, method: &Method, path: &str) -> Result<Matched<'a>, Miss> {
        if let Some(routes) = self.by_method.get(method) {
            for route in routes {
                if let Some(bound) = route.template.matches(path) {
                    return Ok((route.clone(), bound));
                }
            }
        }
        let elsewhere = self
            .by_method
            .iter()
            .filter(|(other, _)| *other != method)
            .flat_map(|(_, routes)| routes)
            .any(|route| route.template.matches(path).is_some());
        Err(if elsewhere {
            Miss::MethodNotAllowed
        } else {
            Miss::NotFound
        })
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_method.values().flatten()
    }

    /// The distinct first path segments (`v1`, `v2`): where the routes are mounted.
    pub fn versions(&self) -> Vec<String> {
        let mut versions: Vec<String> = self
            .iter()
            .filter_map(|route| route.template.version().map(str::to_owned))
            .collect();
        versions.sort();
        versions.dedup();
        versions
    }
}

fn invalid(method: &MethodDescriptor, problem: &str) -> RouteError {
    RouteError::Invalid {
        method: method.full_name().to_owned(),
        problem: problem.to_owned(),
    }
}

/// The fields along a dotted path of proto (or JSON) field names, through singular message
/// fields.
pub fn field_path(message: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut current = message.clone();
    let mut fields = Vec::new();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = field_named(&current, part)?;
        if parts.peek().is_some() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
                _ => return None,
            }
        }
        fields.push(field);
    }
    Some(fields)
}

/// The field at a dotted path of proto (or JSON) field names.
pub fn resolve(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    field_path(message, path)?.pop()
}

/// A field by its proto name or its JSON name.
pub fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switchyard_routes() -> (DescriptorPool, Routes) {
        let pool = DescriptorPool::decode(switchyard_proto::FILE_DESCRIPTOR_SET).unwrap();
        let routes = Routes::from_pool(&pool).unwrap();
        (pool, routes)
    }

    #[test]
    fn every_method_has_a_rest_route_under_its_version() {
        let (pool, routes) = switchyard_routes();
        for service in pool.services() {
            if !service.package_name().starts_with("switchyard.") {
                continue;
            }
            for method in service.methods() {
                let bound = routes
                    .iter()
                    .filter(|r| r.full_name == method.full_name())
                    .count();
                assert!(
                    bound > 0,
                    "{} has no google.api.http route",
                    method.full_name()
                );
            }
        }
        assert_eq!(routes.versions(), vec!["v1".to_owned()]);
    }

    #[test]
    fn requests_find_their_method_verbs_first() {
        let (_, routes) = switchyard_routes();
        let find = |method: Method, path: &str| {
            routes.find(&method, path).map(|(route, bound)| {
                let bound: Vec<_> = bound.into_iter().map(|(f, v)| format!("{f}={v}")).collect();
                (route.full_name.clone(), bound)
            })
        };
        let credentials = "switchyard.credentials.v1.CredentialService";
        assert_eq!(
            find(Method::GET, "/v1/credentials/a:access").unwrap(),
            (
                format!("{credentials}.AccessCredential"),
                vec!["name=credentials/a".to_owned()]
            )
        );
        assert_eq!(
            find(Method::GET, "/v1/credentials/a").unwrap().0,
            format!("{credentials}.GetCredential")
        );
        assert_eq!(
            find(Method::GET, "/v1/credentials:expiring").unwrap().0,
            format!("{credentials}.ListExpiringCredentials")
        );
        assert_eq!(
            find(Method::PATCH, "/v1/credentials/a").unwrap().1,
            vec!["credential.name=credentials/a".to_owned()]
        );
        assert_eq!(
            find(Method::PUT, "/v1/credentials/a").unwrap_err(),
            Miss::MethodNotAllowed
        );
        assert_eq!(
            find(Method::GET, "/v1/nothing").unwrap_err(),
            Miss::NotFound
        );
    }
}

#[cfg(test)]
mod version_tests {
    use prost::Message;
    use prost_reflect::DynamicMessage;

    use super::*;

    /// Every Switchyard file plus `switchyard.demo.v2`, whose one method is bound to `path`.
    fn pool_with_demo(path: &str) -> DescriptorPool {
        let base = DescriptorPool::decode(switchyard_proto::FILE_DESCRIPTOR_SET).unwrap();
        let set = base
            .get_message_by_name("google.protobuf.FileDescriptorSet")
            .unwrap();
        let demo = serde_json::json!({"file": [{
            "name": "switchyard/demo/v2/demo.proto",
            "package": "switchyard.demo.v2",
            "dependency": ["google/api/annotations.proto"],
            "messageType": [{"name": "GetThingRequest",
                "field": [{"name": "name", "number": 1, "type": "TYPE_STRING",
                    "label": "LABEL_OPTIONAL", "jsonName": "name"}]}],
            "service": [{"name": "DemoService", "method": [{"name": "GetThing",
                "inputType": ".switchyard.demo.v2.GetThingRequest",
                "outputType": ".switchyard.demo.v2.GetThingRequest",
                "options": {"[google.api.http]": {"get": path}}}]}],
            "syntax": "proto3"
        }]});
        let demo = DynamicMessage::deserialize(set, demo).unwrap();
        // Encoded sets concatenate into one: `file` is a repeated field.
        let mut bytes = switchyard_proto::FILE_DESCRIPTOR_SET.to_vec();
        bytes.extend(demo.encode_to_vec());
        DescriptorPool::decode(bytes.as_slice()).unwrap()
    }

    #[test]
    fn a_v2_package_is_served_under_v2_and_nowhere_else() {
        let routes = Routes::from_pool(&pool_with_demo("/v2/{name=things/*}")).unwrap();
        assert_eq!(routes.versions(), vec!["v1".to_owned(), "v2".to_owned()]);
        let (route, bound) = routes.find(&Method::GET, "/v2/things/a").unwrap();
        assert_eq!(route.full_name, "switchyard.demo.v2.DemoService.GetThing");
        assert_eq!(bound, vec![("name", "things/a".to_owned())]);
        assert!(routes.find(&Method::GET, "/v1/things/a").is_err());

        let refused = Routes::from_pool(&pool_with_demo("/v1/{name=things/*}")).unwrap_err();
        assert!(refused.to_string().contains("/v2/"), "{refused}");
    }
}
