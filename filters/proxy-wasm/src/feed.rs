//! Opening the server stream a [`Feed`](nexus_filter_core::feed::Feed) asks for on a tick,
//! for every filter that follows one (nexus-auth's revocations, nexus-ratelimit's resets).

use nexus_filter_core::feed::FeedAction;
use nexus_filter_core::{Level, Log};

use crate::{hostcalls, HostLog};

/// `None`: nothing was due. `Some(token)`: the stream was opened (`Some`) or could not be
/// (`None`, logged naming what it follows); hand it to the feed's `opened`.
pub fn open(action: FeedAction, service: &str, method: &str, follows: &str) -> Option<Option<u32>> {
    let FeedAction::Open { cluster, request } = action else {
        return None;
    };
    let opened = hostcalls::grpc_server_stream(&cluster, service, method, &request);
    if let Err(status) = &opened {
        HostLog.log(
            Level::Warn,
            &format!("{follows}: cannot open the stream on cluster {cluster}: {status}"),
        );
    }
    Some(opened.ok())
}
