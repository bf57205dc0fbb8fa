//! The layout of a state map's value, as its BTF describes it: field names,
//! offsets and types, nested structs and arrays written out. A daemon
//! compares the layout a pinned state map was made with (the BTF the kernel
//! keeps with the map) against its own build's, so that a field moved,
//! renamed or retyped in a value of the same size still starts the map
//! afresh instead of having the new programs read the old values under the
//! new layout (the size check alone missed that). A change of a field's
//! meaning alone is not seen: bpf/shaper.h asks for a rename with it.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use aya_obj::generated::{bpf_btf_info, bpf_cmd, bpf_map_info};

/// How deep a layout is written out (struct in struct in array ...): far
/// beyond the state maps' two levels; a type nested deeper is written as
/// `...`, so a malformed BTF cannot recurse without end.
const MAX_DEPTH: usize = 16;

/// Describes type `id` of `btf`: the same text for the same layout, another
/// for a field renamed, moved, resized or retyped. `None` if the BTF does
/// not describe it.
pub(crate) fn describe(btf: &btf_rs::Btf, id: u32) -> Option<String> {
    let mut text = String::new();
    write_type(btf, id, 0, &mut text).then_some(text)
}

fn write_type(btf: &btf_rs::Btf, id: u32, depth: usize, out: &mut String) -> bool {
    use btf_rs::Type;

    if depth > MAX_DEPTH {
        out.push_str("...");
        return true;
    }
    let Ok(ty) = btf.resolve_type_by_id(id) else {
        return false;
    };
    match &ty {
        Type::Int(int) => {
            let sign = if int.is_signed() { 's' } else { 'u' };
            out.push_str(&format!("{sign}{}", int.size() * 8));
        }
        Type::Float(float) => out.push_str(&format!("f{}", float.size() * 8)),
        Type::Enum(e) => out.push_str(&format!("enum{}", e.size() * 8)),
        Type::Enum64(e) => out.push_str(&format!("enum{}", e.size() * 8)),
        Type::Ptr(_) => out.push_str("ptr"),
        Type::Array(array) => {
            out.push_str(&format!("[{}]", array.len()));
            let Ok(element) = btf_rs::BtfType::get_type_id(array) else {
                return false;
            };
            return write_type(btf, element, depth + 1, out);
        }
        Type::Struct(s) | Type::Union(s) => {
            out.push_str(&format!("{}{}{{", ty.name(), s.size()));
            for member in &s.members {
                let name = btf.resolve_name(member).unwrap_or_default();
                out.push_str(&format!("{name}@{}", member.bit_offset()));
                if let Some(bits) = member.bitfield_size() {
                    out.push_str(&format!(":{bits}"));
                }
                out.push(' ');
                let Ok(member_type) = btf_rs::BtfType::get_type_id(member) else {
                    return false;
                };
                if !write_type(btf, member_type, depth + 1, out) {
                    return false;
                }
                out.push(';');
            }
            out.push('}');
        }
        // qualifiers and names do not change a layout: what they name does
        Type::Typedef(_)
        | Type::Volatile(_)
        | Type::Const(_)
        | Type::Restrict(_)
        | Type::TypeTag(_) => {
            let Some(inner) = ty.as_btf_type().and_then(|t| t.get_type_id().ok()) else {
                return false;
            };
            return write_type(btf, inner, depth + 1, out);
        }
        other => out.push_str(other.name()),
    }
    true
}

/// The layout of the value of the map pinned at `pin`, from the BTF the
/// kernel keeps with it; `None` if the map has none (made without BTF) or
/// it cannot be read, so that the caller falls back to comparing sizes.
pub(crate) fn pinned_value_layout(pin: &std::path::Path) -> Option<String> {
    let map = aya::maps::MapData::from_pin(pin).ok()?;
    // SAFETY: bpf_map_info is integers and an integer array: all zeroes
    // is a valid value (and what the kernel expects of the fields it fills)
    let mut info: bpf_map_info = unsafe { std::mem::zeroed() };
    object_info(map.fd().as_fd().as_raw_fd(), &mut info).ok()?;
    if info.btf_id == 0 || info.btf_value_type_id == 0 {
        return None;
    }
    let btf = btf_by_id(info.btf_id).ok()?;
    describe(&btf, info.btf_value_type_id)
}

/// `BPF_OBJ_GET_INFO_BY_FD`'s argument.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `BPF_BTF_GET_FD_BY_ID`'s argument.
#[repr(C)]
struct FdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Runs `bpf(cmd, attr)`: the return value, or the error.
fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, writable value of the size passed; the
    // kernel reads at most that many bytes of it (zero-extending the rest)
    // and writes only through the pointers inside it, which the callers set
    // to buffers of the lengths they give.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// Fills `info` (a `struct bpf_*_info`) for the BPF object behind `fd`.
fn object_info<T>(fd: i32, info: &mut T) -> std::io::Result<()> {
    let mut attr = InfoByFd {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// The kernel's BTF object `id`, parsed.
fn btf_by_id(id: u32) -> Result<btf_rs::Btf, Box<dyn std::error::Error + Send + Sync>> {
    let mut attr = FdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let raw = bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a successful BPF_BTF_GET_FD_BY_ID returns a new descriptor
    // that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    // first the size, then the bytes
    let mut info = bpf_btf_info {
        btf: 0,
        btf_size: 0,
        id: 0,
        name: 0,
        name_len: 0,
        kernel_btf: 0,
    };
    object_info(fd.as_raw_fd(), &mut info)?;
    let mut bytes = vec![0u8; info.btf_size as usize];
    info = bpf_btf_info {
        btf: bytes.as_mut_ptr() as u64,
        btf_size: bytes.len() as u32,
        id: 0,
        name: 0,
        name_len: 0,
        kernel_btf: 0,
    };
    object_info(fd.as_raw_fd(), &mut info)?;
    bytes.truncate(info.btf_size as usize);
    Ok(btf_rs::Btf::from_bytes(&bytes)?)
}

/// The layout of map `name`'s value in the shaper object `object` (its BTF
/// parsed as `btf`); `None` if the object does not describe it.
pub(crate) fn object_value_layout(
    object: &aya_obj::Object,
    btf: &btf_rs::Btf,
    name: &str,
) -> Option<String> {
    match object.maps.get(name)? {
        aya_obj::Map::Btf(map) => describe(btf, map.def.btf_value_type_id),
        aya_obj::Map::Legacy(_) => None,
    }
}

/// The shaper object's BTF, parsed for [`describe`]; `None` if it has none.
pub(crate) fn object_btf(object: &aya_obj::Object) -> Option<btf_rs::Btf> {
    let bytes = object.btf.as_ref()?.to_bytes();
    match btf_rs::Btf::from_bytes(&bytes) {
        Ok(btf) => Some(btf),
        Err(e) => {
            tracing::warn!(error = %e, "cannot parse the shaper's own BTF: pinned state maps are compared by size only");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper_object() -> (aya_obj::Object, btf_rs::Btf) {
        let object =
            aya_obj::Object::parse(crate::shaper::SHAPER_OBJECT).expect("parse the shaper");
        let btf = object_btf(&object).expect("the shaper's BTF");
        (object, btf)
    }

    /// Each state map's layout written out, fields by name and bit offset.
    #[test]
    fn the_state_maps_layouts_name_every_field_at_its_offset() {
        let (object, btf) = shaper_object();
        let sockets = object_value_layout(&object, &btf, "sock_states").expect("sock_states");
        assert!(
            sockets.starts_with("struct48{want@0 u64;applied@64 u64;"),
            "{sockets}"
        );
        assert!(sockets.contains("rcv_window_kib@368 u16;}"), "{sockets}");
        let states = object_value_layout(&object, &btf, "cgroup_states").expect("cgroup_states");
        assert!(states.starts_with("struct192{lock@0 struct4{"), "{states}");
        assert!(states.contains("tokens@192 s64;"), "{states}");
        assert!(
            states.contains("counters@704 struct32{bytes@0 u64;packets@64 u64;"),
            "{states}"
        );
        let credits = object_value_layout(&object, &btf, "cpu_credits").expect("cpu_credits");
        assert!(credits.starts_with("struct96{credit@0 s64;"), "{credits}");
    }

    /// A type the BTF does not have is not described (the caller then
    /// compares sizes only), and never panics.
    #[test]
    fn an_unknown_type_has_no_layout() {
        let (_, btf) = shaper_object();
        assert_eq!(describe(&btf, u32::MAX), None);
    }
}
