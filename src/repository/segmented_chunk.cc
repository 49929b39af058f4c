// Repository: the chunk objects of a segmented repository (config version 2; chunk_table.h,
// docs/repository-format.md section 3a) — storing full chunks and deltas, reading them back
// through their chains, and what gc must know about chains.
//
// An object is | data blob (AAD = the id) | table blob (AAD = id + "table") | footer |. Stored
// in one Put, so a reader sees all of it or nothing. Reading a full chunk lands its data blob in
// the caller's ChunkFrame where a version-1 blob would be (the frame's tailroom holds the table
// and footer after it), so a raw payload is checked where it lies. Reading a delta copies its
// (small) object out of the frame, reads the base into the frame (recursively, each link exactly
// one shallower, so a damaged or hostile chain ends), then lays its stored segments over it.
//
// Gc: a delta keeps its base alive, so marking follows every marked chunk's table; and deleting
// goes deepest first, so a crash mid-sweep never leaves a delta whose base is gone (a later
// backup could find the delta present and reference it).
#include <algorithm>
#include <cstring>
#include <map>

#include "repository/chunk_table.h"
#include "repository/repository.h"
#include "repository/repository_format.h"
#include "util/prefault.h"

namespace blksnap::repo {
namespace {

// What a first ReadTail asks for: the table blob and footer of a whole chunk of the
// repository's chunk and segment sizes (64 segments: 2.2 KiB), plus a blob's header, nonce and
// tag; a larger table (a chunk sealed otherwise) is read again at its exact size.
size_t TailGuess(uint64_t chunk_size, uint32_t segment_size) {
  const uint64_t segments = SegmentCount(chunk_size, segment_size);
  return std::min<size_t>(kChunkTableHeaderSize + (segments + 7) / 8 + 32 * segments + 64,
                          kMaxChunkTableBlob) +
         kChunkFooterSize;
}

static_assert(ChunkFrame::kTailroom >= 16 + kMaxChunkTableBlob + kChunkFooterSize,
              "a full chunk's table and footer must fit after its data blob in a ChunkFrame");

}  // namespace

Result<std::span<const uint8_t>> Repository::AppendTable(std::span<const uint8_t> blob,
                                                         const ChunkTable& table, const Digest& id,
                                                         ChunkFrame* frame,
                                                         std::vector<uint8_t>* buffer) const {
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> table_blob,
                           codec_.Seal(EncodeChunkTable(table), ChunkTableAad(id)));
  const size_t total = blob.size() + table_blob.size() + kChunkFooterSize;
  uint8_t* start = nullptr;
  if (frame != nullptr) {
    const std::span<uint8_t> all = frame->Around(ChunkFrame::kHeadroom);
    if (blob.data() >= all.data() && blob.data() + total <= all.data() + all.size()) {
      start = all.data() + (blob.data() - all.data());  // sealed around the chunk in the frame
    }
  }
  if (start == nullptr) {  // SealInto: the blob is a prefix of *buffer
    if (blob.data() != buffer->data()) return Status::Error(EINVAL, "seal: blob not in its buffer");
    if (buffer->size() < total) buffer->resize(total);
    start = buffer->data();
  }
  std::memcpy(start + blob.size(), table_blob.data(), table_blob.size());
  PutChunkFooter(std::span<uint8_t, 8>(start + blob.size() + table_blob.size(), 8),
                 static_cast<uint32_t>(table_blob.size()));
  return std::span<const uint8_t>(start, total);
}

Result<Repository::Put> Repository::PutSegmented(std::span<const uint8_t> plain, PutBatch* batch,
                                                 std::vector<uint8_t>* seal_buffer,
                                                 ChunkFrame* frame) {
  ChunkTable table;
  table.length = plain.size();
  table.segment_size = codec_.config().segment_size;
  table.digests = SegmentDigests(plain, table.segment_size);
  table.present.assign(table.digests.size(), 1);
  const Digest id = codec_.SegmentedId(table.length, table.digests);
  return StoreOnce(
      id, batch,
      [&](std::vector<uint8_t>* buffer) -> Result<std::span<const uint8_t>> {
        BLKSNAP_ASSIGN_OR_RETURN(std::span<const uint8_t> blob,
                                 frame ? codec_.SealFramed(*frame, plain.size(), id.bytes, buffer)
                                       : codec_.SealInto(plain, id.bytes, buffer));
        return AppendTable(blob, table, id, frame, buffer);
      },
      seal_buffer);
}

Result<Repository::Put> Repository::PutDelta(const Digest& base, const ChunkTable& base_table,
                                             std::span<const uint8_t> plain,
                                             std::span<const uint32_t> changed, PutBatch* batch,
                                             std::vector<uint8_t>* seal_buffer) {
  if (!codec_.segmented() || base_table.length != plain.size() ||
      base_table.segment_size != codec_.config().segment_size ||
      base_table.depth >= kMaxDeltaDepth || changed.empty()) {
    return Status::Error(EINVAL, "delta of chunk " + base.Hex() + ": not a valid base");
  }
  ChunkTable table = base_table;
  table.base = base;
  table.depth = base_table.depth + 1;
  table.present.assign(table.segments(), 0);
  // The stored segments are gathered in a buffer each thread keeps (up to half a chunk, reused
  // from chunk to chunk, prefaulted when it grows): a fresh vector grown by inserts cost a backup
  // worker an mmap, its reallocations and a page fault per 4 KiB for every changed chunk
  // (docs/performance.md, "A faster machine; the CLI's poll, decoders per CPU").
  thread_local std::vector<uint8_t> gathered;
  size_t stored_length = 0;
  for (uint32_t i : changed) {
    if (i >= table.segments() || table.present[i]) {
      return Status::Error(EINVAL, "delta of chunk " + base.Hex() + ": bad segment list");
    }
    const auto segment = plain.subspan(table.SegmentOffset(i), table.SegmentLength(i));
    table.digests[i] = Sha256(segment);
    table.present[i] = 1;
    stored_length += segment.size();
  }
  if (gathered.size() < stored_length) ResizePrefaulted(gathered, stored_length);
  const std::span<uint8_t> stored(gathered.data(), stored_length);
  // The stored segments in segment order (the order a reader lays them down).
  size_t at = 0;
  for (size_t i = 0; i < table.segments(); ++i) {
    if (!table.present[i]) continue;
    const auto segment = plain.subspan(table.SegmentOffset(i), table.SegmentLength(i));
    std::memcpy(stored.data() + at, segment.data(), segment.size());
    at += segment.size();
  }
  const Digest id = codec_.SegmentedId(table.length, table.digests);
  if (id == base) return Put{id, false, 0};  // rewritten with the same bytes
  return StoreOnce(
      id, batch,
      [&](std::vector<uint8_t>* buffer) -> Result<std::span<const uint8_t>> {
        BLKSNAP_ASSIGN_OR_RETURN(std::span<const uint8_t> blob,
                                 codec_.SealInto(stored, id.bytes, buffer));
        return AppendTable(blob, table, id, nullptr, buffer);
      },
      seal_buffer);
}

Result<ChunkTable> Repository::OpenTable(const Digest& id, std::span<const uint8_t> blob) const {
  const std::string label = "chunk " + id.Hex();
  auto plain = codec_.Unseal(blob, ChunkTableAad(id));
  if (!plain.ok()) return Prefixed(plain.status(), label + ": table");
  auto table = ParseChunkTable(*plain);
  if (!table.ok()) return Prefixed(table.status(), label);
  if (table->segment_size != codec_.config().segment_size) {
    return Status::Error(EBADMSG, label + ": segment size " + std::to_string(table->segment_size) +
                                      " is not the repository's");
  }
  return table;
}

Result<ChunkTable> Repository::ReadTable(const Digest& id) {
  const std::string label = "chunk " + id.Hex();
  const std::string name = Codec::ChunkName(id);
  std::vector<uint8_t> tail(TailGuess(chunk_size(), codec_.config().segment_size));
  auto got = store_->ReadTail(name, tail);
  if (!got.ok() && got.status().errnum() == ENOENT) {
    return Status::Error(ENOENT, label + " is missing");
  }
  if (!got.ok()) return Prefixed(got.status(), label);
  auto table_size = ParseChunkFooter(std::span(tail).first(got->length), got->object_size);
  if (!table_size.ok()) return Prefixed(table_size.status(), label);
  const size_t need = *table_size + kChunkFooterSize;
  if (need > got->length) {  // a table of many segments: read exactly it
    tail.resize(need);
    got = store_->ReadTail(name, tail);
    if (!got.ok()) return Prefixed(got.status(), label);
    if (got->length != need) return Status::Error(EBADMSG, label + ": the object changed size");
  }
  return OpenTable(id, std::span(tail).subspan(got->length - need, *table_size));
}

Result<size_t> Repository::ReadSegmented(const Digest& id, ChunkFrame& frame, uint32_t max_depth,
                                         ChunkTable* table_out) {
  const std::string label = "chunk " + id.Hex();
  const std::span<uint8_t> around = frame.Around(codec_.PayloadOffset());
  auto size = store_->ReadInto(Codec::ChunkName(id), around);
  if (!size.ok()) {
    const int e = size.status().errnum();
    if (e == ENOENT) return Status::Error(ENOENT, label + " is missing");
    if (e == EMSGSIZE) return Status::Error(EBADMSG, label + ": object longer than a chunk's");
    return Prefixed(size.status(), label);
  }
  const std::span<const uint8_t> object = around.first(*size);
  auto table_size = ParseChunkFooter(object, object.size());
  if (!table_size.ok()) return Prefixed(table_size.status(), label);
  const size_t data_size = object.size() - kChunkFooterSize - *table_size;
  auto table = OpenTable(id, object.subspan(data_size, *table_size));
  if (!table.ok()) return table.status();
  if (table->length > frame.capacity()) {
    return Status::Error(EBADMSG, label + ": longer than a chunk of this repository");
  }
  if (!table->IsDelta()) {
    auto length = codec_.UnsealFramed(frame, data_size, id.bytes);
    if (!length.ok()) return Prefixed(length.status(), label);
    if (*length != table->length) {
      return Status::Error(EBADMSG, label + ": data and table lengths differ");
    }
  } else {
    if (table->depth > max_depth || table->base == id) {
      return Status::Error(EBADMSG, label + ": delta chain deeper than its base allows");
    }
    // The delta's own object, before its base is read into the same frame.
    const std::vector<uint8_t> data_blob(object.begin(), object.begin() + data_size);
    ChunkTable base_table;
    auto base_length = ReadSegmented(table->base, frame, table->depth - 1, &base_table);
    if (!base_length.ok()) return Prefixed(base_length.status(), label + ": base");
    if (*base_length != table->length || base_table.depth != table->depth - 1) {
      return Status::Error(EBADMSG, label + ": its base " + table->base.Hex() + " does not match");
    }
    auto stored = codec_.Unseal(data_blob, id.bytes);
    if (!stored.ok()) return Prefixed(stored.status(), label);
    if (stored->size() != table->StoredLength()) {
      return Status::Error(EBADMSG, label + ": stored segments and table differ");
    }
    const std::span<uint8_t> plain = frame.plain();
    size_t at = 0;
    for (size_t i = 0; i < table->segments(); ++i) {
      if (!table->present[i]) continue;
      const size_t n = table->SegmentLength(i);
      std::memcpy(plain.data() + table->SegmentOffset(i), stored->data() + at, n);
      at += n;
    }
  }
  const size_t length = table->length;
  if (table_out != nullptr) *table_out = std::move(*table);
  return length;
}

Status Repository::MarkBases(std::unordered_set<Digest, DigestHash>& chunks) {
  std::vector<Digest> todo(chunks.begin(), chunks.end());
  while (!todo.empty()) {
    const Digest id = todo.back();
    todo.pop_back();
    auto table = ReadTable(id);
    if (!table.ok() && table.status().errnum() == ENOENT) continue;  // nothing to keep alive
    if (!table.ok()) {
      return Prefixed(table.status(),
                      "gc refuses to run (a damaged chunk might be a delta whose base is in use)");
    }
    if (table->IsDelta() && chunks.insert(table->base).second) todo.push_back(table->base);
  }
  return Status::Ok();
}

void Repository::SortDeepestFirst(std::vector<std::pair<Digest, std::string>>& chunks) {
  std::vector<uint32_t> depth(chunks.size());
  std::vector<size_t> order(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    order[i] = i;
    auto table = ReadTable(chunks[i].first);
    depth[i] = table.ok() ? table->depth : kMaxDeltaDepth + 1;  // unreadable: nothing relies on it
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return depth[a] > depth[b]; });
  std::vector<std::pair<Digest, std::string>> sorted;
  sorted.reserve(chunks.size());
  for (size_t i : order) sorted.push_back(std::move(chunks[i]));
  chunks = std::move(sorted);
}

}  // namespace blksnap::repo
