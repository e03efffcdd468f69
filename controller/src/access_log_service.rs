//! Envoy's gRPC access log service (`envoy.service.accesslog.v3.AccessLogService`), hosted by
//! the controller: in the mesh, each gateway's `envoy.access_loggers.http_grpc` (rendered into
//! the group's EnvoyFilter, [`crate::render`]) streams every request's entry here, and each
//! becomes the same [`Entry`] `nexus up` reads from its file access log, counted by the same
//! [`RequestMetrics`] and served on the controller's `/metrics`.
//!
//! The entry carries what the file access log's fields carry ([`crate::access_log::json_format`]):
//! Envoy's method, status, response details, flags and duration, and the `x-nexus-*` headers
//! the filters set (logged by name, [`REQUEST_HEADERS`], [`RESPONSE_HEADERS`]).

use std::net::SocketAddr;
use std::sync::Arc;

use nexus_config::contract;
use nexus_proto::accesslog::access_log_service_server::{AccessLogService, AccessLogServiceServer};
use nexus_proto::accesslog::stream_access_logs_message::LogEntries;
use nexus_proto::accesslog::{
    HttpAccessLogEntry, RequestMethod, ResponseFlags, StreamAccessLogsMessage,
    StreamAccessLogsResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::access_log::Entry;
use crate::request_metrics::RequestMetrics;

/// The log name gateways stream under.
pub const LOG_NAME: &str = "nexus";
/// Request headers the entry must carry (Envoy's `additional_request_headers_to_log`).
pub const REQUEST_HEADERS: [&str; 3] = [contract::CATEGORY, contract::UPSTREAM, contract::RULE];
/// Response headers the entry must carry (`additional_response_headers_to_log`).
pub const RESPONSE_HEADERS: [&str; 1] = [contract::CACHE_RESULT];

/// One HTTP entry as the access log's [`Entry`]; `None` for an intermediate entry (a
/// long-lived stream's periodic one: only the final entry is a request).
pub fn entry(e: &HttpAccessLogEntry) -> Option<Entry> {
    let common = e.common_properties.clone().unwrap_or_default();
    if common.intermediate_log_entry {
        return None;
    }
    let request = e.request.clone().unwrap_or_default();
    let response = e.response.clone().unwrap_or_default();
    let header = |map: &std::collections::HashMap<String, String>, name: &str| {
        map.get(name).filter(|v| !v.is_empty()).cloned()
    };
    let duration_ms = common
        .duration
        .or(common.time_to_last_downstream_tx_byte)
        .map(|d| {
            let ms = d.seconds.saturating_mul(1000) + i64::from(d.nanos / 1_000_000);
            u64::try_from(ms).unwrap_or(0)
        })
        .unwrap_or(0);
    Some(Entry {
        method: method(request.request_method()).to_string(),
        status: response
            .response_code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
        details: response.response_code_details.clone(),
        response_flags: flags(&common.response_flags.unwrap_or_default()),
        duration_ms,
        category: header(&request.request_headers, contract::CATEGORY),
        upstream: header(&request.request_headers, contract::UPSTREAM),
        rule: header(&request.request_headers, contract::RULE),
        cache: header(&response.response_headers, contract::CACHE_RESULT),
    })
}

fn method(m: RequestMethod) -> &'static str {
    match m {
        RequestMethod::Get => "GET",
        RequestMethod::Head => "HEAD",
        RequestMethod::Post => "POST",
        RequestMethod::Put => "PUT",
        RequestMethod::Delete => "DELETE",
        RequestMethod::Connect => "CONNECT",
        RequestMethod::Options => "OPTIONS",
        RequestMethod::Trace => "TRACE",
        RequestMethod::Patch => "PATCH",
        RequestMethod::MethodUnspecified => "",
    }
}

/// The flags set, by their short names joined with `,`: what `%RESPONSE_FLAGS%` writes.
pub fn flags(f: &ResponseFlags) -> String {
    let named = [
        (f.failed_local_healthcheck, "LH"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_connection_termination, "UC"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.rate_limit_service_error, "RLSE"),
        (f.downstream_connection_termination, "DC"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.stream_idle_timeout, "SI"),
        (f.invalid_envoy_request_headers, "IH"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_max_stream_duration_reached, "UMSDR"),
        (f.response_from_cache_filter, "RFCF"),
        (f.no_filter_config_found, "NFCF"),
        (f.duration_timeout, "DT"),
        (f.upstream_protocol_error, "UPE"),
        (f.no_cluster_found, "NC"),
        (f.overload_manager, "OM"),
        (f.dns_resolution_failure, "DF"),
    ];
    let set: Vec<&str> = named
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    set.join(",")
}

/// Counts every HTTP entry of every stream into `metrics`.
pub struct Service {
    metrics: Arc<RequestMetrics>,
}

impl Service {
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        Self { metrics }
    }

    fn count(&self, message: &StreamAccessLogsMessage) {
        if let Some(LogEntries::HttpLogs(logs)) = &message.log_entries {
            for e in logs.log_entry.iter().filter_map(entry) {
                self.metrics.observe(&e);
            }
        }
    }
}

#[tonic::async_trait]
impl AccessLogService for Service {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let peer = request.remote_addr();
        let mut stream = request.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(message)) => self.count(&message),
                Ok(None) => return Ok(Response::new(StreamAccessLogsResponse {})),
                Err(status) => {
                    tracing::warn!(?peer, %status, "an access log stream failed");
                    return Err(status);
                }
            }
        }
    }
}

/// Serves the access log service on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<RequestMetrics>) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(AccessLogServiceServer::new(Service::new(metrics)))
        .serve(addr)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_proto::accesslog::{AccessLogCommon, HttpRequestProperties, HttpResponseProperties};

    fn http_entry(status: u32, details: &str, flags: ResponseFlags) -> HttpAccessLogEntry {
        let mut request = HttpRequestProperties {
            request_headers: [
                (
                    contract::CATEGORY.to_string(),
                    "data_operations".to_string(),
                ),
                (contract::UPSTREAM.to_string(), "lake".to_string()),
                (contract::RULE.to_string(), "lake".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        request.set_request_method(RequestMethod::Post);
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                response_flags: Some(flags),
                duration: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 250_000_000,
                }),
                ..Default::default()
            }),
            request: Some(request),
            response: Some(HttpResponseProperties {
                response_code: Some(status),
                response_code_details: details.to_string(),
                response_headers: [(contract::CACHE_RESULT.to_string(), "miss".to_string())].into(),
            }),
        }
    }

    #[test]
    fn an_http_entry_reads_as_the_file_access_logs_entry() {
        let e = entry(&http_entry(
            401,
            "nexus_missing_credentials",
            Default::default(),
        ))
        .unwrap();
        let line = r#"{"method":"POST","status":"401","details":"nexus_missing_credentials","response_flags":"-","duration_ms":"1250","category":"data_operations","upstream":"lake","rule":"lake","cache":"miss"}"#;
        assert_eq!(e, Entry::parse(line).unwrap());
    }

    #[test]
    fn flags_are_envoys_short_names_and_intermediate_entries_are_skipped() {
        let timeout = ResponseFlags {
            upstream_request_timeout: true,
            upstream_retry_limit_exceeded: true,
            ..Default::default()
        };
        assert_eq!(flags(&timeout), "UT,URX");
        assert_eq!(flags(&Default::default()), "");
        let mut e = http_entry(504, "upstream_response_timeout", timeout);
        let metrics = RequestMetrics::default();
        metrics.observe(&entry(&e).unwrap());
        assert!(metrics
            .render()
            .contains(r#"error_rate_total{category="data_operations",reason="timeout"} 1"#));
        e.common_properties.as_mut().unwrap().intermediate_log_entry = true;
        assert_eq!(entry(&e), None);
    }
}
