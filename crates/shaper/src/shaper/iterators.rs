//! The TCP iterators that reach a cgroup's open sockets: lifting their
//! pacing after a detach, readying receivers and senders opened before a
//! limit.

use std::fs::File;

use aya::maps::{Array, MapData};
use aya::programs::Iter;

use super::{
    map_error, program, program_error, raw_map_mut, Shaper, ShaperError, RECEIVERS_PROGRAM,
    RECEIVERS_TARGET_MAP, SENDERS_PROGRAM, SENDERS_TARGET_MAP, UNPACE_PROGRAM, UNPACE_TARGET_MAP,
};
use crate::limits::DirectionLimit;

/// The receivers iterator's RECEIVERS_RATE entry (bpf/lib/maps.h): ready the
/// sockets, or give clamped windows back; any other value is the rate a
/// queue's clamp is set for.
const READY_RECEIVERS: u64 = 0;
const GIVE_BACK_RECEIVERS: u64 = u64::MAX;

impl Shaper {
    /// Lifts the pacing cap this shaper put on a cgroup's open TCP sockets.
    /// Call it after detaching: with the programs gone, nothing else would.
    ///
    /// A TCP iterator sees the sockets of the network namespace it is opened
    /// in, so it runs once in ours (hostNetwork pods) and once in each of
    /// `netns` (the namespaces of the cgroup's processes).
    pub fn unpace(&mut self, cgroup_id: u64, netns: &[File]) -> Result<(), ShaperError> {
        if !self.can_unpace {
            return Ok(());
        }
        self.run_iterator(UNPACE_PROGRAM, UNPACE_TARGET_MAP, cgroup_id, netns)
    }

    /// Readies the TCP sockets a cgroup's processes (or those of cgroups
    /// below it) opened before it got an ingress limit for receiving under
    /// it, as the sockops program does for sockets opened since: shortens
    /// their delayed ACK and arms their receive-window clamp. Call it when a
    /// cgroup gets an ingress limit. The sockets are looked for as in
    /// [`Shaper::unpace`].
    pub fn ready_receivers(&mut self, cgroup_id: u64, netns: &[File]) -> Result<(), ShaperError> {
        self.run_receivers(cgroup_id, READY_RECEIVERS, netns)
    }

    /// Clamps the receive windows of a cgroup's open TCP sockets for an
    /// ingress queue at `rate` that is about to be built in front of them,
    /// as the sockops program clamps them once armed: call it before the
    /// queue holds them (and with TCP let shrink offered windows in their
    /// namespaces), so that what their senders keep in flight is down to
    /// what the queue's FIFOs take by then. If the queue does not come,
    /// [`Shaper::give_back_receive_windows`]. The sockets are looked for as
    /// in [`Shaper::unpace`].
    pub fn clamp_receivers(
        &mut self,
        cgroup_id: u64,
        rate: &DirectionLimit,
        netns: &[File],
    ) -> Result<(), ShaperError> {
        let rate = rate.rate.bytes_per_sec().clamp(1, GIVE_BACK_RECEIVERS - 1);
        self.run_receivers(cgroup_id, rate, netns)
    }

    /// Gives the receive windows [`Shaper::clamp_receivers`] clamped back to
    /// what the sockets' buffers make.
    pub fn give_back_receive_windows(
        &mut self,
        cgroup_id: u64,
        netns: &[File],
    ) -> Result<(), ShaperError> {
        self.run_receivers(cgroup_id, GIVE_BACK_RECEIVERS, netns)
    }

    /// Runs the receivers iterator for `cgroup_id`, told what to do (its
    /// RECEIVERS_RATE entry, bpf/lib/maps.h).
    fn run_receivers(
        &mut self,
        cgroup_id: u64,
        what: u64,
        netns: &[File],
    ) -> Result<(), ShaperError> {
        if !self.can_ready_receivers {
            return Ok(());
        }
        self.write_target(RECEIVERS_TARGET_MAP, &[(1, what)])?;
        self.run_iterator(RECEIVERS_PROGRAM, RECEIVERS_TARGET_MAP, cgroup_id, netns)
    }

    /// Paces the TCP sockets a cgroup's processes (or those of cgroups below
    /// it) opened before it got an egress limit of `rate`, as the sockops
    /// program does for sockets opened since: each at the limit divided
    /// among them (where the egress program starts the cgroup's share too),
    /// with its congestion window clamped, and with the per-ACK callback on
    /// that applies each new share. Call it just before a cgroup gets an
    /// egress limit (so that its open flows meet the bucket paced), or after
    /// its programs were attached again. The sockets are looked for as in
    /// [`Shaper::unpace`]: once to count them, once to pace them.
    pub fn ready_senders(
        &mut self,
        cgroup_id: u64,
        rate: &DirectionLimit,
        netns: &[File],
    ) -> Result<(), ShaperError> {
        if !self.can_ready_senders {
            return Ok(());
        }
        // [cgroup, the rate to pace at (0: count), sockets found, the share
        // the cgroup's bucket starts at]
        self.write_senders_target(&[(1, 0), (2, 0), (3, 0)])?;
        self.run_iterator(SENDERS_PROGRAM, SENDERS_TARGET_MAP, cgroup_id, netns)?;
        let found = self.read_senders_target(2)?;
        if found == 0 {
            return Ok(());
        }
        let limit = rate.rate.bytes_per_sec();
        self.write_senders_target(&[(1, limit), (3, (limit / found).max(1))])?;
        self.run_iterator(SENDERS_PROGRAM, SENDERS_TARGET_MAP, cgroup_id, netns)
    }

    /// Tells the egress program that no cgroup's open sockets were just
    /// paced (a cgroup limited with no processes has none): a new bucket
    /// starts its share at the whole limit.
    pub fn forget_open_senders(&mut self) -> Result<(), ShaperError> {
        if !self.can_ready_senders {
            return Ok(());
        }
        self.write_senders_target(&[(0, 0), (3, 0)])
    }

    fn write_senders_target(&mut self, entries: &[(u32, u64)]) -> Result<(), ShaperError> {
        self.write_target(SENDERS_TARGET_MAP, entries)
    }

    /// Writes `entries` (index, value) into an iterator's target map.
    fn write_target(
        &mut self,
        name: &'static str,
        entries: &[(u32, u64)],
    ) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, name)?).map_err(|e| map_error(name, e))?;
        for (key, value) in entries {
            map.set(*key, value, 0).map_err(|e| map_error(name, e))?;
        }
        Ok(())
    }

    fn read_senders_target(&mut self, key: u32) -> Result<u64, ShaperError> {
        let map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, SENDERS_TARGET_MAP)?)
                .map_err(|e| map_error(SENDERS_TARGET_MAP, e))?;
        map.get(&key, 0)
            .map_err(|e| map_error(SENDERS_TARGET_MAP, e))
    }

    /// Runs the TCP iterator `name` for `cgroup_id` (written into its
    /// `target` map): over the sockets of our network namespace (hostNetwork
    /// pods: a TCP iterator sees the namespace it is opened in), then of each
    /// of `netns` that is not ours (a cgroup with hostNetwork processes lists
    /// ours too: its sockets were walked once already).
    fn run_iterator(
        &mut self,
        name: &'static str,
        target: &'static str,
        cgroup_id: u64,
        netns: &[File],
    ) -> Result<(), ShaperError> {
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(raw_map_mut(&mut self.ebpf, target)?)
                .map_err(|e| map_error(target, e))?;
        map.set(0, cgroup_id, 0).map_err(|e| map_error(target, e))?;
        self.run_iterator_here(name)?;
        for ns in crate::netns::not_ours(netns) {
            crate::netns::run_in(ns, || self.run_iterator_here(name))
                .map_err(ShaperError::EnterNetns)??;
        }
        Ok(())
    }

    /// Runs the TCP iterator `name` over the sockets of the calling thread's
    /// network namespace.
    fn run_iterator_here(&mut self, name: &'static str) -> Result<(), ShaperError> {
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| ShaperError::Iterator {
            program: name,
            source: e,
        };
        let iter: &mut Iter = program(&mut self.ebpf, name)?;
        let link_id = iter.attach().map_err(|e| program_error(name, e))?;
        let link = iter
            .take_link(link_id)
            .map_err(|e| program_error(name, e))?;
        // Reading the iterator runs the program over every TCP socket.
        let mut file = link.into_file().map_err(|e| failed(Box::new(e)))?;
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut sink).map_err(|e| failed(Box::new(e)))?;
        Ok(())
    }
}
