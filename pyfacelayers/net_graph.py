"""Net definitions before any layer exists: Caffe's phase/level/stage filtering
(FilterNet) and its insertion of Split layers for blobs read by several layers
(InsertSplits), with Caffe's exact layer and blob names."""

from collections import defaultdict

from .errors import NetError
from .proto import caffe_pb2


def state_meets_rule(state, rule):
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(net_param, state):
    """A copy of ``net_param`` holding only the layers the NetState includes."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net_param)
    filtered.ClearField("layer")
    for layer in net_param.layer:
        if len(layer.include) and len(layer.exclude):
            raise NetError('layer "%s" specifies both include and exclude rules' % layer.name)
        if len(layer.include):
            keep = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            keep = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if keep:
            filtered.layer.add().CopyFrom(layer)
    return filtered


def split_layer_name(layer_name, blob_name, blob_index):
    return "%s_%s_%d_split" % (blob_name, layer_name, blob_index)


def split_blob_name(layer_name, blob_name, blob_index, split_index):
    return "%s_%s_%d_split_%d" % (blob_name, layer_name, blob_index, split_index)


def insert_splits(net_param):
    """A copy of ``net_param`` where every top read more than once (a loss weight
    counting as a read) feeds a Split layer whose tops go one to each reader."""
    layers = list(net_param.layer)
    last_producer = {}  # blob name -> (layer index, top index) of its latest producer
    source_of = {}  # (layer index, bottom index) -> producing (layer index, top index)
    reads = defaultdict(int)
    loss_weight = {}
    for i, layer in enumerate(layers):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise NetError('layer "%s" (%s): unknown bottom blob "%s" (bottom %d): no '
                               'earlier layer produces it' % (layer.name, layer.type, name, j))
            source_of[(i, j)] = last_producer[name]
            reads[last_producer[name]] += 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_producer[layer.top[j]]
            loss_weight[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                reads[top] += 1

    result = caffe_pb2.NetParameter()
    result.CopyFrom(net_param)
    result.ClearField("layer")
    next_split = defaultdict(int)
    for i, layer in enumerate(layers):
        new = result.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = source_of[(i, j)]
            if reads[src] > 1:
                new.bottom[j] = split_blob_name(layers[src[0]].name, name, src[1],
                                                next_split[src])
                next_split[src] += 1
        for j, name in enumerate(layer.top):
            count = reads[(i, j)]
            if count > 1:
                split = result.layer.add(name=split_layer_name(layer.name, name, j),
                                         type="Split")
                split.bottom.append(name)
                weight = loss_weight.get((i, j), 0)
                for k in range(count):
                    split.top.append(split_blob_name(layer.name, name, j, k))
                    if weight:
                        split.loss_weight.append(weight if k == 0 else 0)
                if weight:
                    # The split's first top carries the loss; readers take the others.
                    new.ClearField("loss_weight")
                    next_split[(i, j)] = 1
    return result
