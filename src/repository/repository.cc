// Repository (layer 3 of issue 16): chunks, indexes and manifests on an ObjectStore, and the
// operations on them — verify, prune, gc, stats. See repository.h for the contract and the
// locking, docs/repository-format.md section 7 for the order of writes and why it is crash-safe.
//
// Every stored object is sealed by the Codec. Chunks and indexes are content-addressed (their
// name is the Codec's ChunkId of the plain bytes) and checked on read by hashing what was
// unsealed; manifests are named by their backup id and sealed with the object name as AAD, so a
// manifest copied under another name fails to open.
//
// Gc starts from the manifests: it marks (sets of digests) and sweeps (List, Delete) under the
// exclusive lease. Verify and its repair are in verify.cc.
#include "repository/repository.h"

#include <algorithm>
#include <cstring>

#include "repository/repository_format.h"
#include "repository/store_url.h"

namespace blksnap::repo {
namespace {

std::span<const uint8_t> IdBytes(const Digest& id) { return id.bytes; }

std::span<const uint8_t> TextBytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

std::string IndexName(const Digest& id) { return std::string(kIndexesPrefix) + id.Hex(); }
std::string BackupName(const std::string& id) { return std::string(kBackupsPrefix) + id; }

// The digest of a chunk object's name "chunks/XX/<hex>", or nothing for a name gc does not own.
std::optional<Digest> ChunkIdOfName(const std::string& name) {
  const size_t prefix = kChunksPrefix.size();
  if (name.size() != prefix + 3 + 64 || name[prefix + 2] != '/') return std::nullopt;
  auto id = Digest::FromHex(std::string_view(name).substr(prefix + 3));
  if (!id.ok() || Codec::ChunkName(*id) != name) return std::nullopt;
  return *id;
}

std::optional<Digest> IndexIdOfName(const std::string& name) {
  auto id = Digest::FromHex(std::string_view(name).substr(kIndexesPrefix.size()));
  if (!id.ok()) return std::nullopt;
  return *id;
}

}  // namespace

Status Repository::Init(ObjectStore& store, const NewRepoOptions& options,
                        std::optional<std::span<const uint8_t>> key) {
  BLKSNAP_ASSIGN_OR_RETURN(RepoConfig config, NewRepoConfig(options, key));
  BLKSNAP_ASSIGN_OR_RETURN(std::string text, EncodeConfig(config));
  Status status = store.PutIfAbsent(std::string(kConfigObject), TextBytes(text));
  if (status.errnum() == EEXIST) {
    return Status::Error(EEXIST, "a repository exists in this store (object 'config')");
  }
  return status;
}

Result<std::unique_ptr<Repository>> Repository::OpenAt(const std::string& location,
                                                       const std::string& key_file) {
  std::optional<std::vector<uint8_t>> key;
  if (!key_file.empty()) {
    BLKSNAP_ASSIGN_OR_RETURN(key, ReadKeyFile(key_file));
  }
  BLKSNAP_ASSIGN_OR_RETURN(std::unique_ptr<ObjectStore> store, OpenStore(location));
  std::optional<std::span<const uint8_t>> key_span;
  if (key) key_span = std::span<const uint8_t>(*key);
  return Open(std::move(store), key_span);
}

Result<std::unique_ptr<Repository>> Repository::Open(std::unique_ptr<ObjectStore> store,
                                                     std::optional<std::span<const uint8_t>> key) {
  auto bytes = store->Get(std::string(kConfigObject));
  if (!bytes.ok()) {
    if (bytes.status().errnum() == ENOENT) {
      return Status::Error(ENOENT, "no repository in this store (object 'config' is missing)");
    }
    return Prefixed(bytes.status(), "read config");
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes->data()), bytes->size());
  auto config = ParseConfig(text);
  if (!config.ok()) return Prefixed(config.status(), "config");
  BLKSNAP_ASSIGN_OR_RETURN(Codec codec, Codec::Open(*config, key));
  return std::unique_ptr<Repository>(new Repository(std::move(store), std::move(codec)));
}

Status Repository::Prefixed(const Status& status, const std::string& prefix) {
  return Status::Error(status.errnum(), prefix + ": " + std::string(status.message()));
}

Result<Repository::Put> Repository::PutChunk(std::span<const uint8_t> plain, PutBatch* batch,
                                             std::vector<uint8_t>* seal_buffer) {
  return PutChunkImpl(plain, batch, seal_buffer, nullptr);
}

Result<Repository::Put> Repository::PutChunk(ChunkFrame& frame, size_t length, PutBatch* batch,
                                             std::vector<uint8_t>* seal_buffer) {
  if (length > frame.capacity()) return Status::Error(EINVAL, "chunk longer than its frame");
  return PutChunkImpl(frame.plain().first(length), batch, seal_buffer, &frame);
}

Result<Repository::Put> Repository::PutChunkImpl(std::span<const uint8_t> plain, PutBatch* batch,
                                                 std::vector<uint8_t>* seal_buffer,
                                                 ChunkFrame* frame) {
  if (codec_.segmented()) return PutSegmented(plain, batch, seal_buffer, frame);
  const Digest id = codec_.ChunkId(plain);
  return StoreOnce(
      id, batch,
      [&](std::vector<uint8_t>* buffer) {
        return frame ? codec_.SealFramed(*frame, plain.size(), IdBytes(id), buffer)
                     : codec_.SealInto(plain, IdBytes(id), buffer);
      },
      seal_buffer);
}

Result<Repository::Put> Repository::StoreOnce(const Digest& id, PutBatch* batch, const SealFn& seal,
                                              std::vector<uint8_t>* seal_buffer) {
  Put put;
  put.id = id;
  {
    MutexLock lock(mu_);
    while (in_flight_.contains(put.id)) put_done_.Wait(mu_);
    in_flight_.insert(put.id);
  }
  auto store = [&]() -> Status {
    const std::string name = Codec::ChunkName(put.id);
    if (batch != nullptr && batch->Contains(name)) return Status::Ok();
    BLKSNAP_ASSIGN_OR_RETURN(bool exists, store_->Exists(name));
    if (exists) return Status::Ok();
    std::vector<uint8_t> own_buffer;
    BLKSNAP_ASSIGN_OR_RETURN(std::span<const uint8_t> blob,
                             seal(seal_buffer ? seal_buffer : &own_buffer));
    BLKSNAP_RETURN_IF_ERROR(batch != nullptr ? batch->Put(name, blob) : store_->Put(name, blob));
    put.stored = true;
    put.stored_bytes = blob.size();
    return Status::Ok();
  };
  Status status = store();
  {
    MutexLock lock(mu_);
    in_flight_.erase(put.id);
  }
  put_done_.SignalAll();
  if (!status.ok()) return Prefixed(status, "chunk " + put.id.Hex());
  return put;
}

Result<std::vector<uint8_t>> Repository::FetchBlob(const std::string& name,
                                                   const std::string& label) {
  auto blob = store_->Get(name);
  if (!blob.ok()) {
    if (blob.status().errnum() == ENOENT) return Status::Error(ENOENT, label + " is missing");
    return Prefixed(blob.status(), label);
  }
  return blob;
}

Result<std::vector<uint8_t>> Repository::GetSealed(const std::string& name, const Digest& id,
                                                   const char* what) {
  const std::string label = std::string(what) + " " + id.Hex();
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> blob, FetchBlob(name, label));
  auto plain = codec_.Unseal(blob, IdBytes(id));
  if (!plain.ok()) return Prefixed(plain.status(), label);
  BLKSNAP_RETURN_IF_ERROR(CheckId(*plain, id, label));
  return plain;
}

Status Repository::CheckId(std::span<const uint8_t> plain, const Digest& id,
                           const std::string& label) const {
  if (codec_.ChunkId(plain) != id) {
    return Status::Error(EBADMSG, label + ": the content does not match its id");
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> Repository::GetChunk(const Digest& id) {
  if (!codec_.segmented()) return GetSealed(Codec::ChunkName(id), id, "chunk");
  std::vector<uint8_t> bytes;
  BLKSNAP_RETURN_IF_ERROR(ReadPooled(id, [&](std::span<const uint8_t> plain) {
    bytes.assign(plain.begin(), plain.end());
    return Status::Ok();
  }));
  return bytes;
}

Status Repository::ReadPooled(const Digest& id,
                              const std::function<Status(std::span<const uint8_t>)>& use) {
  std::unique_ptr<ChunkFrame> frame = TakeFrame();
  if (!frame) return Status::Error(ENOMEM, "no memory for a chunk buffer");
  auto length = ReadChunk(id, *frame, ChunkCheck::kDigest);
  Status status = length.ok() ? use(frame->plain().first(*length)) : length.status();
  GiveFrame(std::move(frame));
  return status;
}

std::unique_ptr<ChunkFrame> Repository::TakeFrame() {
  {
    MutexLock lock(mu_);
    if (!spare_frames_.empty()) {
      std::unique_ptr<ChunkFrame> frame = std::move(spare_frames_.back());
      spare_frames_.pop_back();
      return frame;
    }
  }
  auto frame = std::make_unique<ChunkFrame>(chunk_size());
  return frame->ok() ? std::move(frame) : nullptr;
}

void Repository::GiveFrame(std::unique_ptr<ChunkFrame> frame) {
  MutexLock lock(mu_);
  if (spare_frames_.size() < kSpareFrames) spare_frames_.push_back(std::move(frame));
}

Result<size_t> Repository::ReadChunk(const Digest& id, std::span<uint8_t> out) {
  if (codec_.segmented()) {
    size_t length = 0;
    BLKSNAP_RETURN_IF_ERROR(ReadPooled(id, [&](std::span<const uint8_t> plain) {
      if (plain.size() > out.size()) {
        return Status::Error(EBADMSG, "chunk " + id.Hex() + ": longer than " +
                                          std::to_string(out.size()) + " bytes");
      }
      std::memcpy(out.data(), plain.data(), plain.size());
      length = plain.size();
      return Status::Ok();
    }));
    return length;
  }
  const std::string label = "chunk " + id.Hex();
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> blob, FetchBlob(Codec::ChunkName(id), label));
  auto length = codec_.UnsealInto(blob, IdBytes(id), out);
  if (!length.ok()) return Prefixed(length.status(), label);
  BLKSNAP_RETURN_IF_ERROR(CheckId(out.first(*length), id, label));
  return length;
}

Result<size_t> Repository::ReadChunk(const Digest& id, ChunkFrame& frame, ChunkCheck check) {
  const std::string label = "chunk " + id.Hex();
  if (codec_.segmented()) {
    BLKSNAP_ASSIGN_OR_RETURN(size_t length, ReadSegmented(id, frame, kMaxDeltaDepth, nullptr));
    if (check == ChunkCheck::kDigest) {
      BLKSNAP_RETURN_IF_ERROR(CheckId(frame.plain().first(length), id, label));
    }
    return length;
  }
  auto size = store_->ReadInto(Codec::ChunkName(id), frame.Around(codec_.PayloadOffset()));
  if (!size.ok()) {
    const int e = size.status().errnum();
    if (e == ENOENT) return Status::Error(ENOENT, label + " is missing");
    if (e == EMSGSIZE) return Status::Error(EBADMSG, label + ": blob longer than a chunk's");
    return Prefixed(size.status(), label);
  }
  auto length = codec_.UnsealFramed(frame, *size, IdBytes(id));
  if (!length.ok()) return Prefixed(length.status(), label);
  if (check == ChunkCheck::kDigest) {
    BLKSNAP_RETURN_IF_ERROR(CheckId(frame.plain().first(*length), id, label));
  }
  return length;
}

Result<Digest> Repository::PutIndex(const Index& index) {
  BLKSNAP_RETURN_IF_ERROR(CheckIndex(index));
  const std::vector<uint8_t> encoded = EncodeIndex(index);
  const Digest id = codec_.ChunkId(encoded);
  const std::string name = IndexName(id);
  BLKSNAP_ASSIGN_OR_RETURN(bool exists, store_->Exists(name));
  if (exists) return id;
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> blob, codec_.Seal(encoded, IdBytes(id)));
  BLKSNAP_RETURN_IF_ERROR(store_->Put(name, blob));
  return id;
}

Result<Index> Repository::GetIndex(const Digest& id) {
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> encoded, GetSealed(IndexName(id), id, "index"));
  auto index = ParseIndex(encoded);
  if (!index.ok()) return Prefixed(index.status(), "index " + id.Hex());
  return index;
}

Status Repository::PublishBackup(const Manifest& manifest) {
  BLKSNAP_RETURN_IF_ERROR(CheckManifest(manifest));
  if (manifest.chunk_size != chunk_size()) {
    return Status::Error(EINVAL, "backup " + manifest.id + ": chunk size " +
                                     std::to_string(manifest.chunk_size) +
                                     " is not the repository's " + std::to_string(chunk_size()));
  }
  BLKSNAP_ASSIGN_OR_RETURN(bool index_exists, store_->Exists(IndexName(manifest.index)));
  if (!index_exists) {
    return Status::Error(
        ENOENT, "backup " + manifest.id + ": index " + manifest.index.Hex() + " is missing");
  }
  const std::string name = BackupName(manifest.id);
  const std::string text = EncodeManifest(manifest);
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> blob,
                           codec_.Seal(TextBytes(text), TextBytes(name)));
  Status status = store_->PutIfAbsent(name, blob);
  if (status.errnum() == EEXIST) return Status::Error(EEXIST, "backup " + manifest.id + " exists");
  return status;
}

Result<Manifest> Repository::GetBackup(const std::string& id) {
  if (!IsValidBackupId(id)) return Status::Error(EINVAL, "'" + id + "' is not a backup id");
  const std::string name = BackupName(id);
  auto blob = store_->Get(name);
  if (!blob.ok()) {
    if (blob.status().errnum() == ENOENT)
      return Status::Error(ENOENT, "backup " + id + " not found");
    return Prefixed(blob.status(), "backup " + id);
  }
  auto plain = codec_.Unseal(*blob, TextBytes(name));
  if (!plain.ok()) return Prefixed(plain.status(), "backup " + id);
  auto manifest =
      ParseManifest(std::string_view(reinterpret_cast<const char*>(plain->data()), plain->size()));
  if (!manifest.ok()) return Prefixed(manifest.status(), "backup " + id);
  if (manifest->id != id) {
    return Status::Error(EBADMSG, "backup " + id + ": the manifest names another backup");
  }
  return manifest;
}

Result<std::vector<Manifest>> Repository::ListBackups(
    std::vector<std::pair<std::string, Status>>* damaged) {
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<std::string> names,
                           store_->List(std::string(kBackupsPrefix)));
  std::vector<Manifest> manifests;
  for (const std::string& name : names) {
    const std::string id = name.substr(kBackupsPrefix.size());
    auto manifest = GetBackup(id);
    if (manifest.ok()) {
      manifests.push_back(std::move(*manifest));
    } else if (manifest.status().errnum() != ENOENT && damaged != nullptr) {
      damaged->emplace_back(id, manifest.status());
    }
  }
  return manifests;  // List is sorted and ids sort as names do
}

Result<std::vector<std::string>> Repository::Prune(const RetentionPolicy& policy, bool dry_run) {
  if (policy.empty())
    return Status::Error(EINVAL, "an empty retention policy would keep every backup");
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<Manifest> manifests, ListBackups());
  std::vector<RetentionItem> items;
  for (const Manifest& m : manifests) {
    BLKSNAP_ASSIGN_OR_RETURN(auto time, ParseRfc3339(m.time));
    items.push_back({m.id, m.device, time});
  }
  const std::vector<std::string> kept = SelectKept(std::move(items), policy);
  std::vector<std::string> removed;
  for (const Manifest& m : manifests) {
    if (std::binary_search(kept.begin(), kept.end(), m.id)) continue;
    if (!dry_run) BLKSNAP_RETURN_IF_ERROR(store_->Delete(BackupName(m.id)));
    removed.push_back(m.id);
  }
  return removed;
}

Status Repository::Mark(std::unordered_set<Digest, DigestHash>& chunks,
                        std::unordered_set<Digest, DigestHash>& indexes) {
  std::vector<std::pair<std::string, Status>> damaged;
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<Manifest> manifests, ListBackups(&damaged));
  if (!damaged.empty()) {
    const Status& first = damaged.front().second;
    // Damage (a bad blob or manifest, a newer version, a stray name) is EBADMSG; a store error
    // keeps its errno.
    const int e = first.errnum();
    const int errnum = e == EBADMSG || e == ENOTSUP || e == EPROTO || e == EINVAL ? EBADMSG : e;
    return Status::Error(errnum, "gc refuses to run: " + std::string(first.message()) + " (" +
                                     std::to_string(damaged.size()) +
                                     " unreadable manifest(s); it might reference chunks)");
  }
  for (const Manifest& m : manifests) {
    if (!indexes.insert(m.index).second) continue;
    auto index = GetIndex(m.index);
    if (!index.ok()) return Prefixed(index.status(), "gc refuses to run: backup " + m.id);
    for (const Digest& chunk : index->chunks) {
      if (!chunk.IsZero()) chunks.insert(chunk);
    }
  }
  return codec_.segmented() ? MarkBases(chunks) : Status::Ok();
}

Result<Repository::GcResult> Repository::Gc() {
  auto lease = store_->Lock(LockMode::kExclusive, false);
  if (!lease.ok()) {
    if (lease.status().errnum() == EBUSY) {
      return Status::Error(EBUSY, "a backup is running on the repository");
    }
    return lease.status();
  }
  std::unordered_set<Digest, DigestHash> chunks, indexes;
  BLKSNAP_RETURN_IF_ERROR(Mark(chunks, indexes));

  GcResult result;
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<std::string> chunk_names,
                           store_->List(std::string(kChunksPrefix)));
  std::vector<std::pair<Digest, std::string>> unmarked;
  for (std::string& name : chunk_names) {
    const std::optional<Digest> id = ChunkIdOfName(name);
    if (!id) continue;  // not a chunk object: not ours to delete
    if (chunks.contains(*id)) {
      ++result.chunks_kept;
      continue;
    }
    unmarked.emplace_back(*id, std::move(name));
  }
  // Deltas before their bases: a crash mid-sweep leaves no delta without its base.
  if (codec_.segmented()) SortDeepestFirst(unmarked);
  for (const auto& [id, name] : unmarked) {
    auto size = store_->Size(name);
    if (!size.ok() && size.status().errnum() != ENOENT) return size.status();
    BLKSNAP_RETURN_IF_ERROR(store_->Delete(name));
    ++result.chunks_deleted;
    result.bytes_freed += size.ok() ? *size : 0;
  }
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<std::string> index_names,
                           store_->List(std::string(kIndexesPrefix)));
  for (const std::string& name : index_names) {
    const std::optional<Digest> id = IndexIdOfName(name);
    if (!id || indexes.contains(*id)) continue;
    auto size = store_->Size(name);
    if (!size.ok() && size.status().errnum() != ENOENT) return size.status();
    BLKSNAP_RETURN_IF_ERROR(store_->Delete(name));
    ++result.indexes_deleted;
    result.bytes_freed += size.ok() ? *size : 0;
  }
  // The damaged markers (verify.cc) of backups that are gone.
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<std::string> markers,
                           store_->List(std::string(kDamagedPrefix)));
  for (const std::string& name : markers) {
    BLKSNAP_ASSIGN_OR_RETURN(bool kept,
                             store_->Exists(BackupName(name.substr(kDamagedPrefix.size()))));
    if (!kept) BLKSNAP_RETURN_IF_ERROR(store_->Delete(name));
  }
  return result;
}

Result<Repository::Stats> Repository::GetStats() {
  Stats stats;
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<Manifest> manifests, ListBackups());
  stats.backups = manifests.size();
  for (const Manifest& m : manifests) stats.logical_bytes += m.device_size;
  for (std::string_view prefix : {kChunksPrefix, kIndexesPrefix}) {
    BLKSNAP_ASSIGN_OR_RETURN(std::vector<std::string> names, store_->List(std::string(prefix)));
    for (const std::string& name : names) {
      auto size = store_->Size(name);
      if (!size.ok() && size.status().errnum() == ENOENT) continue;  // deleted by gc meanwhile
      if (!size.ok()) return size.status();
      stats.stored_bytes += *size;
      if (prefix == kChunksPrefix) ++stats.chunks;
    }
  }
  return stats;
}

Result<std::unique_ptr<Lease>> Repository::BackupLease() {
  return store_->Lock(LockMode::kShared, true);
}

}  // namespace blksnap::repo
