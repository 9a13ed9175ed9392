//! The Nacos 1.x naming API: routing, and turning a request into either an
//! immediate reply or a validated command for the shard that owns the
//! service. One file per endpoint family.

pub mod instance;
pub mod operator;
pub mod service;
pub mod validate;

use std::net::SocketAddr;

use crate::http::params::Params;
use crate::http::request::{Method, Request};
use crate::reply::Reply;
use crate::store::Op;

/// Every endpoint, for routing and per-endpoint metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    InstanceRegister,
    InstanceDeregister,
    InstanceUpdate,
    InstancePatch,
    InstanceGet,
    InstanceBeat,
    InstanceList,
    ServiceCreate,
    ServiceUpdate,
    ServiceDelete,
    ServiceGet,
    ServiceList,
    OperatorMetrics,
    OperatorServers,
    DistroServer,
    ClusterNodes,
    Liveness,
    Readiness,
    Metrics,
    /// Peer endpoints (clustered nodes only, token required).
    ClusterReport,
    DistroDatumPut,
    DistroDatumGet,
    DistroSnapshot,
    DistroChecksum,
    DistroBeats,
    /// `/nacos/v1/auth/login` and `/nacos/v1/auth/users/login`.
    AuthLogin,
    /// Known path, wrong method.
    MethodNotAllowed,
    NotFound,
    /// Malformed or over-limit requests, answered by the HTTP layer.
    Invalid,
}

impl Endpoint {
    pub const ALL: [Endpoint; 29] = [
        Endpoint::InstanceRegister,
        Endpoint::InstanceDeregister,
        Endpoint::InstanceUpdate,
        Endpoint::InstancePatch,
        Endpoint::InstanceGet,
        Endpoint::InstanceBeat,
        Endpoint::InstanceList,
        Endpoint::ServiceCreate,
        Endpoint::ServiceUpdate,
        Endpoint::ServiceDelete,
        Endpoint::ServiceGet,
        Endpoint::ServiceList,
        Endpoint::OperatorMetrics,
        Endpoint::OperatorServers,
        Endpoint::DistroServer,
        Endpoint::ClusterNodes,
        Endpoint::Liveness,
        Endpoint::Readiness,
        Endpoint::Metrics,
        Endpoint::ClusterReport,
        Endpoint::DistroDatumPut,
        Endpoint::DistroDatumGet,
        Endpoint::DistroSnapshot,
        Endpoint::DistroChecksum,
        Endpoint::DistroBeats,
        Endpoint::AuthLogin,
        Endpoint::MethodNotAllowed,
        Endpoint::NotFound,
        Endpoint::Invalid,
    ];

    /// Label value in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::InstanceRegister => "instance_register",
            Endpoint::InstanceDeregister => "instance_deregister",
            Endpoint::InstanceUpdate => "instance_update",
            Endpoint::InstancePatch => "instance_patch",
            Endpoint::InstanceGet => "instance_get",
            Endpoint::InstanceBeat => "instance_beat",
            Endpoint::InstanceList => "instance_list",
            Endpoint::ServiceCreate => "service_create",
            Endpoint::ServiceUpdate => "service_update",
            Endpoint::ServiceDelete => "service_delete",
            Endpoint::ServiceGet => "service_get",
            Endpoint::ServiceList => "service_list",
            Endpoint::OperatorMetrics => "operator_metrics",
            Endpoint::OperatorServers => "operator_servers",
            Endpoint::DistroServer => "distro_server",
            Endpoint::ClusterNodes => "cluster_nodes",
            Endpoint::Liveness => "liveness",
            Endpoint::Readiness => "readiness",
            Endpoint::Metrics => "metrics",
            Endpoint::ClusterReport => "cluster_report",
            Endpoint::DistroDatumPut => "distro_datum_put",
            Endpoint::DistroDatumGet => "distro_datum_get",
            Endpoint::DistroSnapshot => "distro_snapshot",
            Endpoint::DistroChecksum => "distro_checksum",
            Endpoint::DistroBeats => "distro_beats",
            Endpoint::AuthLogin => "auth_login",
            Endpoint::MethodNotAllowed => "method_not_allowed",
            Endpoint::NotFound => "not_found",
            Endpoint::Invalid => "invalid",
        }
    }

    /// Whether a node with `--auth` asks who is calling: every client
    /// endpoint but health and login (peer endpoints have the cluster
    /// token; `/metrics` is decided by `--auth-metrics`).
    pub fn needs_identity(self) -> bool {
        !matches!(
            self,
            Endpoint::Liveness
                | Endpoint::Readiness
                | Endpoint::Metrics
                | Endpoint::AuthLogin
                | Endpoint::ClusterReport
                | Endpoint::DistroDatumPut
                | Endpoint::DistroDatumGet
                | Endpoint::DistroSnapshot
                | Endpoint::DistroChecksum
                | Endpoint::DistroBeats
                | Endpoint::MethodNotAllowed
                | Endpoint::NotFound
                | Endpoint::Invalid
        )
    }

    /// Position in `ALL` (declaration order; the `routes` test checks it).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which endpoint a method and path name.
pub fn route(method: Method, path: &str) -> Endpoint {
    use Endpoint::*;
    use Method::*;
    let path = path.strip_suffix('/').unwrap_or(path);
    let path = path.strip_prefix("/nacos").unwrap_or(path);
    let get = matches!(method, Get | Head);
    match path {
        "/v1/ns/instance" => match method {
            Post => InstanceRegister,
            Delete => InstanceDeregister,
            Put => InstanceUpdate,
            Patch => InstancePatch,
            Get | Head => InstanceGet,
            _ => MethodNotAllowed,
        },
        "/v1/ns/instance/beat" => match method {
            Put | Post => InstanceBeat,
            _ => MethodNotAllowed,
        },
        "/v1/ns/instance/list" if get => InstanceList,
        "/v1/ns/service" => match method {
            Post => ServiceCreate,
            Put => ServiceUpdate,
            Delete => ServiceDelete,
            Get | Head => ServiceGet,
            _ => MethodNotAllowed,
        },
        "/v1/ns/service/list" if get => ServiceList,
        "/v1/ns/operator/metrics" if get => OperatorMetrics,
        "/v1/ns/operator/servers" if get => OperatorServers,
        "/v1/ns/operator/distro/server" if get => DistroServer,
        "/v1/core/cluster/nodes" if get => ClusterNodes,
        "/v1/console/health/liveness" if get => Liveness,
        "/v1/console/health/readiness" if get => Readiness,
        "/metrics" if get => Metrics,
        "/v1/core/cluster/report" => match method {
            Post | Put => ClusterReport,
            _ => MethodNotAllowed,
        },
        "/v1/ns/distro/datum" => match method {
            Put => DistroDatumPut,
            Get => DistroDatumGet,
            _ => MethodNotAllowed,
        },
        "/v1/ns/distro/datums" if get => DistroSnapshot,
        "/v1/ns/distro/checksum" => match method {
            Put => DistroChecksum,
            _ => MethodNotAllowed,
        },
        "/v1/ns/distro/beats" => match method {
            Put => DistroBeats,
            _ => MethodNotAllowed,
        },
        "/v1/auth/login" | "/v1/auth/users/login" => match method {
            Post | Get => AuthLogin,
            _ => MethodNotAllowed,
        },
        "/v1/ns/instance/list"
        | "/v1/ns/service/list"
        | "/v1/ns/operator/metrics"
        | "/v1/ns/operator/servers"
        | "/v1/ns/operator/distro/server"
        | "/v1/core/cluster/nodes"
        | "/v1/console/health/liveness"
        | "/v1/console/health/readiness"
        | "/metrics"
        | "/v1/ns/distro/datums" => MethodNotAllowed,
        _ => NotFound,
    }
}

/// A push subscription that rides along with a list query.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub addr: SocketAddr,
    pub clusters: String,
}

/// What a request turns into.
#[derive(Debug)]
pub enum Action {
    /// Answered without touching registry data.
    Reply(Reply),
    /// A command for the shard that owns the service.
    Op(Op, Option<Subscription>),
    /// Names of a group's services, gathered from every shard.
    ServiceList {
        namespace: String,
        group: String,
        page_no: usize,
        page_size: usize,
    },
    /// Counts gathered from every shard.
    OperatorMetrics,
    /// The Prometheus page.
    Metrics,
    /// A peer endpoint (answered by `cluster::peer_api`).
    Peer,
    /// A login (answered by `auth`).
    Login,
}

/// Facts about the node that some answers need.
#[derive(Debug, Clone, Copy)]
pub struct NodeInfo {
    /// This node's address as members see it.
    pub advertise: SocketAddr,
}

/// Turns a routed request into an action. `peer` is the client's address.
pub fn handle(endpoint: Endpoint, req: &Request, peer: SocketAddr, node: &NodeInfo) -> Action {
    let params = Params::parse(req.query, req.form_body.then_some(&*req.body));
    handle_params(endpoint, req, &params, peer, node)
}

/// `handle`, with the request's parameters already parsed.
pub fn handle_params(
    endpoint: Endpoint,
    req: &Request,
    params: &Params,
    peer: SocketAddr,
    node: &NodeInfo,
) -> Action {
    let built = match endpoint {
        Endpoint::InstanceRegister => instance::register(params),
        Endpoint::InstanceDeregister => instance::deregister(params),
        Endpoint::InstanceUpdate => instance::update(params, req.user_agent),
        Endpoint::InstancePatch => instance::patch(params),
        Endpoint::InstanceGet => instance::get(params),
        Endpoint::InstanceBeat => instance::beat(params),
        Endpoint::InstanceList => instance::list(params, peer),
        Endpoint::ServiceCreate => service::create(params),
        Endpoint::ServiceUpdate => service::update(params),
        Endpoint::ServiceDelete => service::delete(params),
        Endpoint::ServiceGet => service::get(params),
        Endpoint::ServiceList => service::list(params),
        Endpoint::OperatorMetrics => Ok(Action::OperatorMetrics),
        Endpoint::OperatorServers => Ok(Action::Reply(operator::servers(node))),
        Endpoint::DistroServer => operator::distro_server(params, node),
        Endpoint::ClusterNodes => Ok(Action::Reply(operator::cluster_nodes(node))),
        Endpoint::Liveness | Endpoint::Readiness => {
            Ok(Action::Reply(Reply::static_text(200, "OK")))
        }
        Endpoint::Metrics => Ok(Action::Metrics),
        Endpoint::ClusterReport
        | Endpoint::DistroDatumPut
        | Endpoint::DistroDatumGet
        | Endpoint::DistroSnapshot
        | Endpoint::DistroChecksum
        | Endpoint::DistroBeats => Ok(Action::Peer),
        Endpoint::AuthLogin => Ok(Action::Login),
        Endpoint::MethodNotAllowed => Ok(Action::Reply(Reply::text(405, "Method Not Allowed"))),
        Endpoint::NotFound | Endpoint::Invalid => Ok(Action::Reply(Reply::not_found("Not Found"))),
    };
    built.unwrap_or_else(Action::Reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(Method::Post, "/nacos/v1/ns/instance"),
            Endpoint::InstanceRegister
        );
        assert_eq!(
            route(Method::Put, "/nacos/v1/ns/instance/beat"),
            Endpoint::InstanceBeat
        );
        assert_eq!(
            route(Method::Post, "/nacos/v1/ns/instance/list"),
            Endpoint::MethodNotAllowed
        );
        assert_eq!(
            route(Method::Get, "/nacos/v1/ns/nothing"),
            Endpoint::NotFound
        );
        assert_eq!(route(Method::Get, "/metrics"), Endpoint::Metrics);
        assert_eq!(route(Method::Get, "/nacos/metrics"), Endpoint::Metrics);
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }
}
