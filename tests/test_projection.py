import torch

from rayseg.models.projection import DenseHead, MLPHead


def test_dense_head_equals_mlp_head_applied_per_position():
    torch.manual_seed(0)
    dense, mlp = DenseHead(8, 16, 4).eval(), MLPHead(8, 16, 4).eval()
    # same weights: a 1x1 conv is a linear map applied at every position
    mlp[0].weight.data.copy_(dense[0].weight.data.view(16, 8))
    mlp[1].load_state_dict(dense[1].state_dict())
    mlp[3].weight.data.copy_(dense[3].weight.data.view(4, 16))
    mlp[3].bias.data.copy_(dense[3].bias.data)
    x = torch.randn(2, 8, 3, 5)
    per_position = mlp(x.permute(0, 2, 3, 1).reshape(-1, 8)).view(2, 3, 5, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(dense(x), per_position)


def test_normalize_gives_unit_vectors_per_position():
    z = DenseHead(8, 16, 4, normalize=True)(torch.randn(2, 8, 3, 3))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 3, 3))
    g = MLPHead(8, 16, 4, normalize=True)(torch.randn(3, 8))
    torch.testing.assert_close(g.norm(dim=1), torch.ones(3))
